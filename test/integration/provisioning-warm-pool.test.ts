import request from 'supertest';
import { registerUser, startTestApp, type TestApp } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { eventually } from '../helpers/fixtures';

const POOL = 'tenantry_test_db_pool_';
const poolDatabases = async () => (await adminQuery(`SELECT datname FROM pg_database WHERE starts_with(datname, '${POOL}') ORDER BY 1`)).rows.map((r) => r.datname as string);

let t: TestApp;
beforeAll(async () => {
  t = await startTestApp('warmpool', { WORKER: 'on', TENANT_WARM_POOL: '2' });
});
afterAll(async () => {
  await t.close();
  for (const name of await poolDatabases()) await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
});

test('keeps ready databases; a new store takes one (renamed, owned by its role) and the pool is refilled', async () => {
  const before = await eventually(async () => {
    const names = await poolDatabases();
    expect(names).toHaveLength(2);
    return names;
  }, 20000);

  const owner = await registerUser(t.app);
  const auth = { Authorization: `Bearer ${owner.token}` };
  const store = await request(t.app).post('/api/stores').set(auth).send({ name: 'Warm', slug: `warm-${Date.now()}` }).expect(201);
  await request(t.app).post(`/api/stores/${store.body.id}/database`).set(auth).send({ mode: 'managed' }).expect(202);
  await eventually(async () => {
    const res = await request(t.app).get(`/api/stores/${store.body.id}/provisioning`).set(auth).expect(200);
    expect(res.body.state).toBe('completed');
  }, 20000);

  const row = await t.ctx.master.models.StoreDatabase.findByPk(store.body.id);
  const database = row!.databaseName!;
  // One of the warm databases became the store's: it is gone from the pool under its old name…
  const after = await poolDatabases();
  expect(before.filter((n) => !after.includes(n))).toHaveLength(1);
  // …and the store's database is owned by the store's role, as are its tables.
  const owner_ = await adminQuery(`SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = '${database}'`);
  expect(owner_.rows[0].owner).toBe(database);
  const u = new URL(t.db.url);
  u.pathname = `/${database}`;
  const tables = await adminQuery(`SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'`, u.toString());
  expect(tables.rows.map((r) => r.tableowner)).toEqual([database]);

  // The pool is topped up again.
  await eventually(async () => expect(await poolDatabases()).toHaveLength(2), 20000);
});
