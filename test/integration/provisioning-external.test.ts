import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import request from 'supertest';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { secretContext } from '../../src/lib/crypto';
import { migrationsDir } from '../../src/db/migrate';
import { getQueue, QueueName } from '../../src/queue/queues';
import { registerUser, startTestApp, type TestApp } from '../helpers/app';
import { adminQuery, assertTestDatabase, urlFor } from '../helpers/db';
import { countRows, startInstance } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { startPasswordServer, type PasswordServer } from '../helpers/password-server';
import { auth, createStoreViaApi, queryWith, waitForProvisioning } from '../helpers/stores';
import { startWorkers } from '../../src/worker';

/**
 * A store owner brings their own database. Its credentials are checked before anything is stored or
 * queued; a good, empty database is then provisioned like a managed one (schema, store row, first admin).
 */
let t: TestApp;
let api: RecordingClient;
const hex = randomBytes(4).toString('hex');
const names = {
  role: `tenantry_test_ext_role_${hex}`,
  nologin: `tenantry_test_ext_nologin_${hex}`,
  empty: `tenantry_test_ext_empty_${hex}`,
  used: `tenantry_test_ext_used_${hex}`,
  spare: `tenantry_test_ext_spare_${hex}`,
};
const PASSWORD = `pw-${randomBytes(9).toString('base64url')}`;
/** A server that checks passwords (the test servers trust every local connection). */
let checking: PasswordServer;

beforeAll(async () => {
  [t, checking] = await Promise.all([startTestApp('provext', { WORKER: 'on' }), startPasswordServer(`right-${randomBytes(9).toString('base64url')}`)]);
  api = recordingClient(t.app);
  for (const n of Object.values(names)) assertTestDatabase(n);
  await adminQuery(`CREATE ROLE ${names.role} LOGIN PASSWORD '${PASSWORD}'`);
  await adminQuery(`CREATE ROLE ${names.nologin} NOLOGIN PASSWORD '${PASSWORD}'`);
  await adminQuery(`CREATE DATABASE ${names.empty} OWNER ${names.role}`);
  await adminQuery(`CREATE DATABASE ${names.used} OWNER ${names.role}`);
  await adminQuery(`CREATE DATABASE ${names.spare} OWNER ${names.role}`);
  // Someone else's data: a table that is not Tenantry's.
  await queryWith({ connectionString: urlFor(names.used) }, 'CREATE TABLE legacy_orders (id integer PRIMARY KEY, total numeric)');
});
afterAll(async () => {
  await checking?.stop();
  await t.close();
  for (const db of [names.empty, names.used, names.spare]) await adminQuery(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  for (const role of [names.role, names.nologin]) await adminQuery(`DROP ROLE IF EXISTS ${role}`);
  // Last: a failed check must not leave the app and its connections open.
  expectNoLeaks(api.responses);
});

const external = (fields: Partial<TenantConnection>) => ({ mode: 'external', host: '127.0.0.1', port: 5432, database: names.empty, user: names.role, password: PASSWORD, ...fields });

/** Nothing was stored or queued for the store, and it still waits for a database. */
async function expectNothingStored(storeId: string) {
  expect(await t.ctx.master.models.StoreDatabase.findByPk(storeId)).toBeNull();
  expect((await t.ctx.master.models.Store.findByPk(storeId, { rejectOnEmpty: true })).status).toBe('pending_database');
  expect(await getQueue(t.ctx, QueueName.provisioning).getJob(`provision-${storeId}`)).toBeUndefined();
  expect(await countRows(t, 'audit_log', "store_id = :id AND action = 'store.database.connected'", { id: storeId })).toBe(0);
  expectProblem(await api.get(`/api/stores/${storeId}/provisioning`).set(auth(owner.token)), 404, 'NOT_FOUND');
}

let owner: Awaited<ReturnType<typeof registerUser>>;
let storeId: string;
beforeAll(async () => {
  owner = await registerUser(t.app);
  storeId = (await createStoreViaApi(t.app, owner.token, { name: 'Own DB Shop' })).id;
});

describe('an external database that cannot be used is refused before anything is stored or queued', () => {
  test('a server that does not answer → 422 DATABASE_UNREACHABLE', async () => {
    const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send(external({ port: 1 }));
    expectProblem(res, 422, 'DATABASE_UNREACHABLE');
    expect(res.text).not.toContain(PASSWORD);
    expect(res.text).not.toContain('127.0.0.1');
    await expectNothingStored(storeId);
  });

  test('a database that does not exist on a reachable server → 422 DATABASE_UNREACHABLE', async () => {
    const res = await api
      .post(`/api/stores/${storeId}/database`)
      .set(auth(owner.token))
      .send({ mode: 'external', connectionString: `postgres://${names.role}:${PASSWORD}@127.0.0.1:5432/tenantry_test_no_such_db_${hex}` });
    expectProblem(res, 422, 'DATABASE_UNREACHABLE');
    expect(res.text).not.toContain(PASSWORD);
    await expectNothingStored(storeId);
  });

  test('a wrong password → 422 DATABASE_AUTH_FAILED', async () => {
    // The right password gets in: only the password is wrong below.
    expect(await queryWith({ host: checking.host, port: checking.port, user: checking.user, password: checking.password, database: 'postgres' }, 'SELECT 1 AS ok')).toEqual([{ ok: 1 }]);
    for (const body of [
      external({ host: checking.host, port: checking.port, database: 'postgres', user: checking.user, password: 'wrong-password' }),
      { mode: 'external', connectionString: `postgres://${checking.user}:wrong-password@${checking.host}:${checking.port}/postgres` },
    ]) {
      const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send(body);
      expectProblem(res, 422, 'DATABASE_AUTH_FAILED');
      expect(res.text).not.toContain('wrong-password');
    }
    await expectNothingStored(storeId);
  });

  test('a role the server refuses (unknown, or not allowed to log in) → 422 DATABASE_AUTH_FAILED', async () => {
    for (const user of [`tenantry_test_nobody_${hex}`, names.nologin]) {
      const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send(external({ user, password: 'wrong-password' }));
      expectProblem(res, 422, 'DATABASE_AUTH_FAILED');
      expect(res.text).not.toContain(user);
    }
    await expectNothingStored(storeId);
  });

  test('a database already holding tables that are not Tenantry\'s → 422 DATABASE_NOT_EMPTY, and its tables are untouched', async () => {
    const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send(external({ database: names.used }));
    expectProblem(res, 422, 'DATABASE_NOT_EMPTY');
    await expectNothingStored(storeId);
    const tables = await queryWith<{ table_name: string }>({ connectionString: urlFor(names.used) }, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`);
    expect(tables).toEqual([{ table_name: 'legacy_orders' }]);
  });
});

test('a reachable, empty external database is provisioned: the store becomes active with the tenant schema in that database', async () => {
  const connectionString = `postgres://${names.role}:${PASSWORD}@127.0.0.1:5432/${names.empty}`;
  const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send({ mode: 'external', connectionString }).expect(202);
  expect(res.body).toEqual({ jobId: `provision-${storeId}`, status: 'queued' });
  const done = await waitForProvisioning(t.app, owner.token, storeId);
  expect(done).toMatchObject({ state: 'completed', progress: 100, error: null, schemaVersion: 1 });

  const store = await api.get(`/api/stores/${storeId}`).set(auth(owner.token)).expect(200);
  expect(store.body).toMatchObject({ status: 'active', database: { mode: 'external', status: 'ready', schemaVersion: 1 } });
  expect(store.text).not.toContain(PASSWORD);

  // The master keeps the credentials encrypted, and they are the ones given.
  const row = await t.ctx.master.models.StoreDatabase.findByPk(storeId, { rejectOnEmpty: true });
  expect(row).toMatchObject({ mode: 'external', server: null, databaseName: names.empty, status: 'ready', schemaVersion: 1 });
  expect(row.credentials).not.toContain(PASSWORD);
  expect(t.ctx.encryptor.decryptJson<TenantConnection>(row.credentials, secretContext.storeCredentials(storeId))).toMatchObject({ host: '127.0.0.1', port: 5432, database: names.empty, user: names.role, password: PASSWORD });

  // The tenant schema is in the owner's database: every migration, the store row and the owner as its admin.
  const conn = { host: '127.0.0.1', port: 5432, database: names.empty, user: names.role, password: PASSWORD };
  const files = readdirSync(migrationsDir('tenant')).filter((f) => f.endsWith('.sql')).map((f) => parseInt(f, 10));
  const applied = await queryWith<{ id: number }>(conn, 'SELECT id FROM migrations WHERE id > 0 ORDER BY id');
  expect(applied.map((r) => r.id)).toEqual(files);
  expect(await queryWith(conn, 'SELECT id, name FROM stores')).toEqual([{ id: storeId, name: 'Own DB Shop' }]);
  expect(await queryWith(conn, "SELECT email, platform_user_id FROM users WHERE role = 'admin'")).toEqual([{ email: owner.user.email, platform_user_id: owner.user.id }]);
  const owners = await queryWith<{ tableowner: string }>(conn, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'");
  expect(owners).toEqual([{ tableowner: names.role }]);

  // And the store sells from it.
  await api.post(`/api/stores/${storeId}/hostnames`).set(auth(owner.token)).send({ hostname: 'own-db.external.test' }).expect(201);
  await request(t.app).post('/api/store/products').set('Host', 'own-db.external.test').set(auth(owner.token)).send({ sku: 'OWN-1', name: 'Own', priceCents: 100, stock: 1 }).expect(201);
  expect(await queryWith(conn, 'SELECT sku FROM products')).toEqual([{ sku: 'OWN-1' }]);
});

describe('with EXTERNAL_DB_PRIVATE_NETWORKS=deny (the production default), the platform never connects into its own network for an owner', () => {
  let guarded: Awaited<ReturnType<typeof startInstance>>;
  beforeAll(async () => {
    guarded = await startInstance(t, { EXTERNAL_DB_PRIVATE_NETWORKS: 'deny' });
  });
  afterAll(async () => {
    await guarded.ctx.close();
  });

  test('a private, loopback or link-local address, literal or by name → 422 DATABASE_UNREACHABLE, and nothing is stored or queued', async () => {
    const nosy = await registerUser(t.app);
    const other = (await createStoreViaApi(t.app, nosy.token, { name: 'Nosy' })).id;
    for (const body of [
      external({}), // 127.0.0.1, where this very database does exist and would accept the login
      external({ host: 'localhost' }),
      external({ host: '169.254.169.254' }),
      { mode: 'external', connectionString: `postgres://${names.role}:${PASSWORD}@[::1]:5432/${names.empty}` },
      { mode: 'external', connectionString: `postgres://${names.role}:${PASSWORD}@10.0.0.7:5432/${names.empty}` },
    ]) {
      const res = await request(guarded.app).post(`/api/stores/${other}/database`).set(auth(nosy.token)).send(body);
      expectProblem(res, 422, 'DATABASE_UNREACHABLE');
      expect(res.body.detail).toMatch(/private network/);
      expect(res.text).not.toContain(PASSWORD);
    }
    expect(await t.ctx.master.models.StoreDatabase.findByPk(other)).toBeNull();
    expect(await getQueue(t.ctx, QueueName.provisioning).getJob(`provision-${other}`)).toBeUndefined();
    // The same request is accepted where private networks are allowed (development, these tests).
    await request(t.app).post(`/api/stores/${other}/database`).set(auth(nosy.token)).send(external({})).expect(202);
  });

  test('a provisioning job run by a guarded worker does not connect either: the store ends provisioning_failed, saying why', async () => {
    // Connected where private networks are allowed, provisioned by a worker where they are not.
    const redisPrefix = `test:${randomBytes(4).toString('hex')}`;
    const open = await startInstance(t, { PROVISIONING_ATTEMPTS: '1' }, { redisPrefix });
    const worker = await startInstance(t, { EXTERNAL_DB_PRIVATE_NETWORKS: 'deny' }, { redisPrefix });
    const workers = await startWorkers(worker.ctx);
    try {
      const user = await registerUser(open.app);
      const id = (await createStoreViaApi(open.app, user.token, { name: 'Queued before the policy' })).id;
      await request(open.app).post(`/api/stores/${id}/database`).set(auth(user.token)).send(external({ database: names.spare })).expect(202);
      const failed = await waitForProvisioning(open.app, user.token, id, 'failed');
      expect(failed.error).toBe('migrate: the database is on a private network address, which this platform does not connect to');
      expect((await t.ctx.master.models.Store.findByPk(id, { rejectOnEmpty: true })).status).toBe('provisioning_failed');
      // Nothing reached the database.
      expect(await queryWith({ connectionString: urlFor(names.spare) }, "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'")).toEqual([{ n: 0 }]);
    } finally {
      await workers.close();
      await worker.ctx.close();
      await open.ctx.close();
    }
  });

  test('a store whose external database is on a private address is not served by a guarded instance (503), and still is by the others', async () => {
    await request(t.app).get('/api/store/info').set('Host', 'own-db.external.test').expect(200);
    const res = await request(guarded.app).get('/api/store/info').set('Host', 'own-db.external.test');
    expectProblem(res, 503, 'TENANT_UNAVAILABLE');
  });
});
