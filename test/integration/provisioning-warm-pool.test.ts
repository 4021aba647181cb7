import request from 'supertest';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { queryWith, storeConnection } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { schemaDigest } from '../../src/db/migrate';
import { QueueName } from '../../src/queue/queues';

const POOL = 'tenantry_test_db_pool_';
const poolDatabases = async () =>
  (await adminQuery(`SELECT datname FROM pg_database WHERE starts_with(datname, '${POOL}') ORDER BY 1`)).rows.map(
    (r) => r.datname as string,
  );

const t = useSuite('warmpool', { WORKER: 'on', TENANT_WARM_POOL: '2' });
// After the suite's tear-down (declared after it), once its workers no longer fill the pool.
afterAll(async () => {
  for (const name of await poolDatabases()) {
    await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await adminQuery(`DROP ROLE IF EXISTS ${name}`);
  }
});

const urlOf = (database: string) => {
  const u = new URL(t.db.url);
  u.pathname = `/${database}`;
  return u.toString();
};
const tableOwners = async (database: string) =>
  (await adminQuery(`SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'`, urlOf(database))).rows.map(
    (r) => r.tableowner as string,
  );

test('keeps ready databases; a new store takes one (renamed with its role) and the pool is refilled', async () => {
  const before = await eventually(async () => {
    const names = await poolDatabases();
    expect(names).toHaveLength(2);
    return names;
  }, 20000);
  // Each warm database is already handed to a role of its own, which cannot log in until a store has it.
  for (const name of before) {
    const { rows } = await adminQuery(
      `SELECT pg_get_userbyid(d.datdba) AS owner, r.rolcanlogin AS login, has_database_privilege('public', d.oid, 'CONNECT') AS public
         FROM pg_database d JOIN pg_roles r ON r.rolname = d.datname WHERE d.datname = '${name}'`,
    );
    expect(rows).toEqual([{ owner: name, login: false, public: false }]);
    expect(await tableOwners(name)).toEqual([name]);
  }

  const owner = await registerUser(t.app);
  const auth = { Authorization: `Bearer ${owner.token}` };
  const store = await request(t.app)
    .post('/api/stores')
    .set(auth)
    .send({ name: 'Warm', slug: `warm-${Date.now()}` })
    .expect(201);
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
  const owner_ = await adminQuery(
    `SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = '${database}'`,
  );
  expect(owner_.rows[0].owner).toBe(database);
  expect(await tableOwners(database)).toEqual([database]);
  // Its pool role went with it (renamed to the store's role, which now logs in with the stored password).
  const claimed = before.find((n) => !after.includes(n))!;
  expect((await adminQuery(`SELECT 1 FROM pg_roles WHERE rolname = '${claimed}'`)).rowCount).toBe(0);
  const conn = await storeConnection(t, store.body.id);
  expect(conn.user).toBe(database);
  expect(await queryWith(conn, 'SELECT current_user AS me, (SELECT name FROM stores) AS store')).toEqual([
    { me: database, store: 'Warm' },
  ]);

  // The pool is topped up again.
  await eventually(async () => expect(await poolDatabases()).toHaveLength(2), 20000);
});

test('a refill clears what an interrupted one or an older schema left behind', async () => {
  const digest = schemaDigest('tenant');
  const leftovers = {
    preparing: `tenantry_test_db_prep_${digest}_feedfacecafe`,
    olderSchema: 'tenantry_test_db_pool_000000000000_feedfacecafe',
    orphanRole: `tenantry_test_db_pool_${digest}_0rphan0rphan`,
  };
  await adminQuery(`CREATE DATABASE ${leftovers.preparing}`);
  await adminQuery(`CREATE DATABASE ${leftovers.olderSchema}`);
  await adminQuery(`CREATE ROLE ${leftovers.orphanRole} NOLOGIN`);

  await t.ctx.queues.get(QueueName.maintenance).add('refill-warm-pool', { task: 'refill-warm-pool' });
  await eventually(async () => {
    const { rows } = await adminQuery(
      `SELECT datname AS name FROM pg_database WHERE datname IN ('${leftovers.preparing}', '${leftovers.olderSchema}')
       UNION ALL SELECT rolname FROM pg_roles WHERE rolname = '${leftovers.orphanRole}'`,
    );
    expect(rows).toEqual([]);
  }, 20000);
  expect(await poolDatabases()).toHaveLength(2);
});
