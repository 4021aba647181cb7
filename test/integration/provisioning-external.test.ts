import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import request from 'supertest';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { secretContext } from '../../src/lib/crypto';
import { migrationsDir } from '../../src/db/migrate';
import { prepareTenant } from '../../src/provisioning/tenant-db';
import { QueueName } from '../../src/queue/queues';
import { registerUser } from '../helpers/app';
import { adminQuery, assertTestDatabase, urlFor } from '../helpers/db';
import { countRows } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import type { PasswordServer } from '../helpers/password-server';
import { auth, createStoreViaApi, queryWith, waitForProvisioning } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { startWorkers } from '../../src/worker';

/**
 * A store owner brings their own database. Its credentials are checked before anything is stored or
 * queued; a good, empty database is then provisioned like a managed one (schema, store row, first admin).
 */
let starting: Promise<PasswordServer>;
const t = useSuite('provext', (s) => {
  // Started beside the app rather than after it.
  starting = s.passwordServer(`right-${randomBytes(9).toString('base64url')}`);
  return { WORKER: 'on' };
});
let api: RecordingClient;
const hex = randomBytes(4).toString('hex');
const names = {
  role: `tenantry_test_ext_role_${hex}`,
  nologin: `tenantry_test_ext_nologin_${hex}`,
  empty: `tenantry_test_ext_empty_${hex}`,
  used: `tenantry_test_ext_used_${hex}`,
  spare: `tenantry_test_ext_spare_${hex}`,
  fresh: `tenantry_test_ext_fresh_${hex}`,
  mine: `tenantry_test_ext_mine_${hex}`,
  twice: `tenantry_test_ext_twice_${hex}`,
  schemas: `tenantry_test_ext_schemas_${hex}`,
  lookalike: `tenantry_test_ext_lookalike_${hex}`,
};
const databases = [
  names.empty,
  names.used,
  names.spare,
  names.fresh,
  names.mine,
  names.twice,
  names.schemas,
  names.lookalike,
];
const PASSWORD = `pw-${randomBytes(9).toString('base64url')}`;
/** A server that checks passwords (the test servers trust every local connection). */
let checking: PasswordServer;

beforeAll(async () => {
  checking = await starting;
  api = recordingClient(t.app);
  for (const n of Object.values(names)) assertTestDatabase(n);
  t.defer('the roles and databases made here', async () => {
    for (const db of databases) await adminQuery(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    for (const role of [names.role, names.nologin]) await adminQuery(`DROP ROLE IF EXISTS ${role}`);
  });
  await adminQuery(`CREATE ROLE ${names.role} LOGIN PASSWORD '${PASSWORD}'`);
  await adminQuery(`CREATE ROLE ${names.nologin} NOLOGIN PASSWORD '${PASSWORD}'`);
  for (const db of databases) await adminQuery(`CREATE DATABASE ${db} OWNER ${names.role}`);
  // Someone else's data: a table that is not Tenantry's.
  await queryWith(
    { connectionString: urlFor(names.used) },
    'CREATE TABLE legacy_orders (id integer PRIMARY KEY, total numeric)',
  );
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const external = (fields: Partial<TenantConnection>) => ({
  mode: 'external',
  host: '127.0.0.1',
  port: 5432,
  database: names.empty,
  user: names.role,
  password: PASSWORD,
  ...fields,
});

/** Nothing was stored or queued for the store, and it still waits for a database. */
async function expectNothingStored(storeId: string, token = owner.token) {
  expect(await t.ctx.master.models.StoreDatabase.findByPk(storeId)).toBeNull();
  expect((await t.ctx.master.models.Store.findByPk(storeId, { rejectOnEmpty: true })).status).toBe('pending_database');
  expect(await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${storeId}`)).toBeUndefined();
  expect(
    await countRows(t, 'audit_log', "store_id = :id AND action = 'store.database.connected'", { id: storeId }),
  ).toBe(0);
  expectProblem(await api.get(`/api/stores/${storeId}/provisioning`).set(auth(token)), 404, 'NOT_FOUND');
}

let owner: Awaited<ReturnType<typeof registerUser>>;
let storeId: string;
beforeAll(async () => {
  owner = await registerUser(t.app);
  storeId = (await createStoreViaApi(t.app, owner.token, { name: 'Own DB Shop' })).id;
});

describe('an external database that cannot be used is refused before anything is stored or queued', () => {
  test('a server that does not answer → 422 DATABASE_UNREACHABLE', async () => {
    const res = await api
      .post(`/api/stores/${storeId}/database`)
      .set(auth(owner.token))
      .send(external({ port: 1 }));
    expectProblem(res, 422, 'DATABASE_UNREACHABLE');
    expect(res.text).not.toContain(PASSWORD);
    expect(res.text).not.toContain('127.0.0.1');
    await expectNothingStored(storeId);
  });

  test('a database that does not exist on a reachable server → 422 DATABASE_UNREACHABLE', async () => {
    const res = await api
      .post(`/api/stores/${storeId}/database`)
      .set(auth(owner.token))
      .send({
        mode: 'external',
        connectionString: `postgres://${names.role}:${PASSWORD}@127.0.0.1:5432/tenantry_test_no_such_db_${hex}`,
      });
    expectProblem(res, 422, 'DATABASE_UNREACHABLE');
    expect(res.text).not.toContain(PASSWORD);
    await expectNothingStored(storeId);
  });

  test('a wrong password → 422 DATABASE_AUTH_FAILED', async () => {
    // The right password gets in: only the password is wrong below.
    expect(
      await queryWith(
        {
          host: checking.host,
          port: checking.port,
          user: checking.user,
          password: checking.password,
          database: 'postgres',
        },
        'SELECT 1 AS ok',
      ),
    ).toEqual([{ ok: 1 }]);
    for (const body of [
      external({
        host: checking.host,
        port: checking.port,
        database: 'postgres',
        user: checking.user,
        password: 'wrong-password',
      }),
      {
        mode: 'external',
        connectionString: `postgres://${checking.user}:wrong-password@${checking.host}:${checking.port}/postgres`,
      },
    ]) {
      const res = await api.post(`/api/stores/${storeId}/database`).set(auth(owner.token)).send(body);
      expectProblem(res, 422, 'DATABASE_AUTH_FAILED');
      expect(res.text).not.toContain('wrong-password');
    }
    await expectNothingStored(storeId);
  });

  test('a role the server refuses (unknown, or not allowed to log in) → 422 DATABASE_AUTH_FAILED', async () => {
    for (const user of [`tenantry_test_nobody_${hex}`, names.nologin]) {
      const res = await api
        .post(`/api/stores/${storeId}/database`)
        .set(auth(owner.token))
        .send(external({ user, password: 'wrong-password' }));
      expectProblem(res, 422, 'DATABASE_AUTH_FAILED');
      expect(res.text).not.toContain(user);
    }
    await expectNothingStored(storeId);
  });

  test("a database already holding tables that are not Tenantry's → 422 DATABASE_NOT_EMPTY, and its tables are untouched", async () => {
    const res = await api
      .post(`/api/stores/${storeId}/database`)
      .set(auth(owner.token))
      .send(external({ database: names.used }));
    expectProblem(res, 422, 'DATABASE_NOT_EMPTY');
    await expectNothingStored(storeId);
    const tables = await queryWith<{ table_name: string }>(
      { connectionString: urlFor(names.used) },
      `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`,
    );
    expect(tables).toEqual([{ table_name: 'legacy_orders' }]);
  });
});

test('a reachable, empty external database is provisioned: the store becomes active with the tenant schema in that database', async () => {
  const connectionString = `postgres://${names.role}:${PASSWORD}@127.0.0.1:5432/${names.empty}`;
  const res = await api
    .post(`/api/stores/${storeId}/database`)
    .set(auth(owner.token))
    .send({ mode: 'external', connectionString })
    .expect(202);
  expect(res.body).toEqual({ jobId: `provision-${storeId}`, status: 'queued' });
  const done = await waitForProvisioning(t.app, owner.token, storeId);
  expect(done).toMatchObject({ state: 'completed', progress: 100, error: null, schemaVersion: 1 });

  const store = await api.get(`/api/stores/${storeId}`).set(auth(owner.token)).expect(200);
  expect(store.body).toMatchObject({
    status: 'active',
    database: { mode: 'external', status: 'ready', schemaVersion: 1 },
  });
  expect(store.text).not.toContain(PASSWORD);

  // The master keeps the credentials encrypted, and they are the ones given.
  const row = await t.ctx.master.models.StoreDatabase.findByPk(storeId, { rejectOnEmpty: true });
  expect(row).toMatchObject({
    mode: 'external',
    server: null,
    databaseName: names.empty,
    status: 'ready',
    schemaVersion: 1,
  });
  expect(row.credentials).not.toContain(PASSWORD);
  expect(
    t.ctx.encryptor.decryptJson<TenantConnection>(row.credentials, secretContext.storeCredentials(storeId)),
  ).toMatchObject({ host: '127.0.0.1', port: 5432, database: names.empty, user: names.role, password: PASSWORD });

  // The tenant schema is in the owner's database: every migration, the store row and the owner as its admin.
  const conn = { host: '127.0.0.1', port: 5432, database: names.empty, user: names.role, password: PASSWORD };
  const files = readdirSync(migrationsDir('tenant'))
    .filter((f) => f.endsWith('.sql'))
    .map((f) => parseInt(f, 10));
  const applied = await queryWith<{ id: number }>(conn, 'SELECT id FROM migrations WHERE id > 0 ORDER BY id');
  expect(applied.map((r) => r.id)).toEqual(files);
  expect(await queryWith(conn, 'SELECT id, name FROM stores')).toEqual([{ id: storeId, name: 'Own DB Shop' }]);
  expect(await queryWith(conn, "SELECT email, platform_user_id FROM users WHERE role = 'admin'")).toEqual([
    { email: owner.user.email, platform_user_id: owner.user.id },
  ]);
  const owners = await queryWith<{ tableowner: string }>(
    conn,
    "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
  );
  expect(owners).toEqual([{ tableowner: names.role }]);

  // And the store sells from it.
  await request(t.app)
    .post('/api/store/products')
    .set('X-Store-Id', storeId)
    .set(auth(owner.token))
    .send({ sku: 'OWN-1', name: 'Own', priceCents: 100, stock: 1 })
    .expect(201);
  expect(await queryWith(conn, 'SELECT sku FROM products')).toEqual([{ sku: 'OWN-1' }]);
});

describe("a database is taken only empty or holding this very store's Tenantry schema; anything else → 422 DATABASE_NOT_EMPTY", () => {
  /** Settings reaching one of this suite's databases as the role that owns it. */
  const asRole = (database: string) => ({
    host: '127.0.0.1',
    port: 5432,
    database,
    user: names.role,
    password: PASSWORD,
  });
  const tables = (database: string) =>
    queryWith<{ name: string }>(
      asRole(database),
      "SELECT schemaname || '.' || tablename AS name FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
  beforeAll(async () => {
    // Room for the owner's further stores.
    await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'agency' });
  });

  test("another store's provisioned database → 422, nothing is stored or queued, and its data is untouched", async () => {
    // names.empty now holds the first store's Tenantry schema (provisioned above).
    const stranger = await registerUser(t.app);
    const theirs = (await createStoreViaApi(t.app, stranger.token, { name: 'Wants your data' })).id;
    const ownSecond = (await createStoreViaApi(t.app, owner.token, { name: 'Second shop of the same owner' })).id;
    const before = await tables(names.empty);
    for (const [id, token] of [
      [theirs, stranger.token],
      [ownSecond, owner.token],
    ]) {
      for (const body of [
        external({ database: names.empty }),
        { mode: 'external', connectionString: `postgres://${names.role}:${PASSWORD}@127.0.0.1:5432/${names.empty}` },
      ]) {
        expectProblem(
          await api.post(`/api/stores/${id}/database`).set(auth(token)).send(body),
          422,
          'DATABASE_NOT_EMPTY',
        );
      }
      await expectNothingStored(id, token);
    }
    expect(await tables(names.empty)).toEqual(before);
    expect(await queryWith(asRole(names.empty), 'SELECT id FROM stores')).toEqual([{ id: storeId }]);
  });

  test('a store connecting again the database an earlier attempt provisioned for it is accepted, and provisioning completes', async () => {
    const mine = (await createStoreViaApi(t.app, owner.token, { name: 'Second try' })).id;
    // An earlier attempt got as far as the schema and the store row, then the store ended provisioning_failed.
    const store = await t.ctx.master.models.Store.findByPk(mine, { rejectOnEmpty: true });
    await prepareTenant(asRole(names.mine), { store: { id: mine, name: store.name, slug: store.slug } });
    await store.update({ status: 'provisioning_failed' });

    await api
      .post(`/api/stores/${mine}/database`)
      .set(auth(owner.token))
      .send(external({ database: names.mine }))
      .expect(202);
    expect(await waitForProvisioning(t.app, owner.token, mine)).toMatchObject({ state: 'completed', error: null });
    expect((await t.ctx.master.models.Store.findByPk(mine, { rejectOnEmpty: true })).status).toBe('active');
    expect(await queryWith(asRole(names.mine), 'SELECT id FROM stores')).toEqual([{ id: mine }]);
  });

  test("a Tenantry schema whose store row is not this store's alone → 422", async () => {
    const id = (await createStoreViaApi(t.app, owner.token, { name: 'Shared marker' })).id;
    const store = await t.ctx.master.models.Store.findByPk(id, { rejectOnEmpty: true });
    await prepareTenant(asRole(names.twice), { store: { id, name: store.name, slug: store.slug } });
    // The schema allows one row; the database's owner can change that.
    await queryWith(asRole(names.twice), 'DROP INDEX stores_single_row');
    await queryWith(asRole(names.twice), "INSERT INTO stores (id, name, slug) VALUES ($1, 'Other', 'other-shop')", [
      storeId,
    ]);
    expectProblem(
      await api
        .post(`/api/stores/${id}/database`)
        .set(auth(owner.token))
        .send(external({ database: names.twice })),
      422,
      'DATABASE_NOT_EMPTY',
    );
    await expectNothingStored(id);
  });

  test("tables in another schema, tables merely named like Tenantry's, a view, or a stores table of another shape → 422, untouched", async () => {
    const id = (await createStoreViaApi(t.app, owner.token, { name: 'Lookalikes' })).id;
    await queryWith(asRole(names.schemas), 'CREATE SCHEMA legacy; CREATE TABLE legacy.orders (id integer)');
    for (const sql of [
      'CREATE TABLE products (id integer)', // a name of ours, but no store row
      'DROP TABLE products; CREATE VIEW products AS SELECT 1 AS id',
      'DROP VIEW products; CREATE TABLE stores (name text)', // no id column: the marker cannot be read
      `DROP TABLE stores; CREATE TABLE stores (id text); INSERT INTO stores VALUES ('${id}')`, // the marker, but an odd table beside it
    ]) {
      await queryWith(asRole(names.lookalike), sql);
      if (sql.startsWith('DROP TABLE stores'))
        await queryWith(asRole(names.lookalike), 'CREATE TABLE legacy_orders (id integer)');
      expectProblem(
        await api
          .post(`/api/stores/${id}/database`)
          .set(auth(owner.token))
          .send(external({ database: names.lookalike })),
        422,
        'DATABASE_NOT_EMPTY',
      );
    }
    expectProblem(
      await api
        .post(`/api/stores/${id}/database`)
        .set(auth(owner.token))
        .send(external({ database: names.schemas })),
      422,
      'DATABASE_NOT_EMPTY',
    );
    expect(await tables(names.schemas)).toEqual([{ name: 'legacy.orders' }]);
    expect(await tables(names.lookalike)).toEqual([{ name: 'public.legacy_orders' }, { name: 'public.stores' }]);
    await expectNothingStored(id);
  });
});

describe('with EXTERNAL_DB_PRIVATE_NETWORKS=deny (the production default), the platform never connects into its own network for an owner', () => {
  let guarded: Awaited<ReturnType<typeof t.instance>>;
  beforeAll(async () => {
    guarded = await t.instance({ EXTERNAL_DB_PRIVATE_NETWORKS: 'deny' });
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
    expect(await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${other}`)).toBeUndefined();
    // The same request is accepted where private networks are allowed (development, these tests).
    await request(t.app)
      .post(`/api/stores/${other}/database`)
      .set(auth(nosy.token))
      .send(external({ database: names.fresh }))
      .expect(202);
  });

  test('a provisioning job run by a guarded worker does not connect either: the store ends provisioning_failed, saying why', async () => {
    // Connected where private networks are allowed, provisioned by a worker where they are not.
    const redisPrefix = `test:${randomBytes(4).toString('hex')}`;
    const open = await t.instance({ PROVISIONING_ATTEMPTS: '1' }, { redisPrefix });
    const worker = await t.instance({ EXTERNAL_DB_PRIVATE_NETWORKS: 'deny' }, { redisPrefix });
    const workers = await t.open(
      'the guarded worker',
      () => startWorkers(worker.ctx),
      (w) => w.close(),
    );
    try {
      const user = await registerUser(open.app);
      const id = (await createStoreViaApi(open.app, user.token, { name: 'Queued before the policy' })).id;
      await request(open.app)
        .post(`/api/stores/${id}/database`)
        .set(auth(user.token))
        .send(external({ database: names.spare }))
        .expect(202);
      const failed = await waitForProvisioning(open.app, user.token, id, 'failed');
      expect(failed.error).toBe(
        'migrate: the database is on a private network address, which this platform does not connect to',
      );
      expect((await t.ctx.master.models.Store.findByPk(id, { rejectOnEmpty: true })).status).toBe(
        'provisioning_failed',
      );
      // Nothing reached the database.
      expect(
        await queryWith(
          { connectionString: urlFor(names.spare) },
          "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'",
        ),
      ).toEqual([{ n: 0 }]);
    } finally {
      await workers.close();
      await worker.ctx.close();
      await open.ctx.close();
    }
  });

  test('a store whose external database is on a private address is not served by a guarded instance (503), and still is by the others', async () => {
    await request(t.app).get('/api/store/info').set('X-Store-Id', storeId).expect(200);
    const res = await request(guarded.app).get('/api/store/info').set('X-Store-Id', storeId);
    expectProblem(res, 503, 'TENANT_UNAVAILABLE');
  });
});
