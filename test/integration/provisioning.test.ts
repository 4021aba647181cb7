import request from 'supertest';
import { claimHostname, type TestDnsServer } from '../helpers/dns-server';
import { QueueName } from '../../src/queue/queues';
import { registerUser } from '../helpers/app';
import { adminQuery, TEST_SERVER_URL, urlFor } from '../helpers/db';
import { countRows, eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import {
  auth,
  createStoreViaApi,
  provisionManagedStore,
  queryWith,
  storeConnection,
  waitForProvisioning,
} from '../helpers/stores';
import { useSuite } from '../helpers/suite';

let dns: TestDnsServer;
const t = useSuite('prov', async (s) => {
  dns = await s.dns();
  return { WORKER: 'on', DNS_SERVERS: dns.address };
});

test('the onboarding path: register, create a store, connect managed, poll until active, add a hostname, sell on it', async () => {
  const owner = await registerUser(t.app);
  const store = await request(t.app)
    .post('/api/stores')
    .set(auth(owner.token))
    .send({ name: 'Corner Shop', slug: `corner-${Date.now()}` })
    .expect(201);
  expect(store.body).toMatchObject({ status: 'pending_database', role: 'owner', database: null, hostnames: [] });
  const storeId = store.body.id as string;

  const queued = await request(t.app)
    .post(`/api/stores/${storeId}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' })
    .expect(202);
  expect(queued.body).toEqual({ jobId: expect.any(String), status: 'queued' });
  const again = await request(t.app)
    .post(`/api/stores/${storeId}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' });
  expect([202, 409]).toContain(again.status);
  if (again.status === 202) expect(again.body.jobId).toBe(queued.body.jobId);

  const done = await eventually(async () => {
    const res = await request(t.app).get(`/api/stores/${storeId}/provisioning`).set(auth(owner.token)).expect(200);
    if (res.body.state !== 'completed') throw new Error(`still ${res.body.state} ${res.body.step} ${res.body.error}`);
    return res.body;
  }, 20000);
  expect(done).toMatchObject({ state: 'completed', progress: 100, error: null, schemaVersion: 1 });

  const row = await t.ctx.master.models.StoreDatabase.findByPk(storeId);
  expect(row!.status).toBe('ready');
  expect(row!.credentials).not.toMatch(/password/i);

  // The platform issued the store its <slug>.<STORE_DOMAIN> (localhost by default) as it became active.
  await request(t.app).get('/api/store/info').set('Host', `${store.body.slug}.localhost`).expect(200);
  // The owner's own domain routes once its TXT record proves it.
  const host = 'corner.example.test';
  await claimHostname(t.app, owner.token, storeId, 'Corner.Example.TEST', dns);
  const product = await request(t.app)
    .post('/api/store/products')
    .set('Host', host)
    .set(auth(owner.token))
    .send({ sku: 'APPLE', name: 'Apple', priceCents: 50, stock: 10 })
    .expect(201);
  const customer = await request(t.app)
    .post('/api/store/auth/register')
    .set('Host', host)
    .send({ email: 'shopper@example.test', password: 'shopper-pass-1', name: 'Shopper' })
    .expect(201);
  const order = await request(t.app)
    .post('/api/store/orders')
    .set('Host', host)
    .set(auth(customer.body.token))
    .send({ items: [{ productId: product.body.id, quantity: 3 }] })
    .expect(201);
  expect(order.body).toMatchObject({ totalCents: 150, items: [{ sku: 'APPLE', quantity: 3 }] });

  const info = await request(t.app).get('/api/store/info').set('Host', host).expect(200);
  expect(info.body).toMatchObject({ id: storeId, name: 'Corner Shop' });
  const dbs = await adminQuery(`SELECT datname FROM pg_database WHERE datname = '${row!.databaseName}'`);
  expect(dbs.rowCount).toBe(1);
});

describe('managed databases', () => {
  test("each store's tables are owned by its own login role, and no store's role can open another store's database", async () => {
    const [a, b] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
    const [storeA, storeB] = await Promise.all([
      provisionManagedStore(t.app, a.token),
      provisionManagedStore(t.app, b.token),
    ]);
    const [connA, connB] = await Promise.all([storeConnection(t, storeA.id), storeConnection(t, storeB.id)]);
    expect(connA.user).not.toBe(connB.user);
    expect(connA.database).not.toBe(connB.database);

    for (const conn of [connA, connB]) {
      const row = await t.ctx.master.models.StoreDatabase.findOne({
        where: { databaseName: conn.database },
        rejectOnEmpty: true,
      });
      expect(row).toMatchObject({ mode: 'managed', status: 'ready', server: `${conn.host}:${conn.port}` });
      // Looked at by the server's administrator, not by the role itself.
      const admin = urlFor(conn.database);
      const tables = await queryWith<{ tablename: string; tableowner: string }>(
        { connectionString: admin },
        `SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`,
      );
      expect(tables.map((r) => r.tablename)).toEqual(
        expect.arrayContaining(['migrations', 'stores', 'users', 'products', 'orders']),
      );
      expect(new Set(tables.map((r) => r.tableowner))).toEqual(new Set([conn.user]));
      const sequences = await queryWith<{ sequenceowner: string }>(
        { connectionString: admin },
        'SELECT sequenceowner FROM pg_sequences',
      );
      for (const s of sequences) expect(s.sequenceowner).toBe(conn.user);
      const [db] = await queryWith<{ owner: string; public_connect: boolean }>(
        { connectionString: admin },
        `SELECT pg_get_userbyid(datdba) AS owner,
                EXISTS (SELECT 1 FROM aclexplode(datacl) acl WHERE acl.grantee = 0 AND acl.privilege_type = 'CONNECT') AS public_connect
           FROM pg_database WHERE datname = $1`,
        [conn.database],
      );
      expect(db).toEqual({ owner: conn.user, public_connect: false });
      const [role] = await queryWith<{ rolsuper: boolean; rolcreatedb: boolean; rolcreaterole: boolean }>(
        { connectionString: TEST_SERVER_URL },
        'SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1',
        [conn.user],
      );
      expect(role).toEqual({ rolsuper: false, rolcreatedb: false, rolcreaterole: false });
    }

    // Each role opens its own database…
    expect(await queryWith(connA, 'SELECT current_user AS who, count(*)::int AS stores FROM stores')).toEqual([
      { who: connA.user, stores: 1 },
    ]);
    expect(await queryWith(connB, 'SELECT current_user AS who, count(*)::int AS stores FROM stores')).toEqual([
      { who: connB.user, stores: 1 },
    ]);
    // …and is refused at the door of the other's (CONNECT is revoked from PUBLIC).
    await expect(queryWith({ ...connA, database: connB.database }, 'SELECT 1')).rejects.toMatchObject({
      code: '42501',
      message: expect.stringMatching(/permission denied for database/),
    });
    await expect(queryWith({ ...connB, database: connA.database }, 'SELECT 1')).rejects.toMatchObject({
      code: '42501',
    });
  });

  test('the same connect request sent twice at once queues one job and makes one database', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const [first, second] = await Promise.all(
      [0, 1].map(() =>
        request(t.app).post(`/api/stores/${store.id}/database`).set(auth(owner.token)).send({ mode: 'managed' }),
      ),
    );
    expect([first.status, second.status]).toEqual([202, 202]);
    expect(first.body).toEqual({ jobId: `provision-${store.id}`, status: 'queued' });
    expect(second.body).toEqual(first.body);

    await waitForProvisioning(t.app, owner.token, store.id);
    expect(await countRows(t, 'store_databases', 'store_id = :id', { id: store.id })).toBe(1);
    const conn = await storeConnection(t, store.id);
    const dbs = await adminQuery(
      `SELECT datname FROM pg_database WHERE datname LIKE '%${store.id.replace(/-/g, '')}%'`,
    );
    expect(dbs.rows).toEqual([{ datname: conn.database }]);
    // The stored password is the one that works: the role was made (once) with it.
    expect(await queryWith(conn, 'SELECT count(*)::int AS n FROM users WHERE role = $1', ['admin'])).toEqual([
      { n: 1 },
    ]);
    const jobs = await t.ctx.queues
      .get(QueueName.provisioning)
      .getJobs(['completed', 'failed', 'active', 'waiting', 'delayed']);
    expect(jobs.filter((j) => j.data.storeId === store.id).map((j) => j.id)).toEqual([`provision-${store.id}`]);
  });
});

describe('provisioning answers', () => {
  test('GET provisioning before any database is connected answers 404; after completion it reports 100% done', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    expectProblem(
      await request(t.app).get(`/api/stores/${store.id}/provisioning`).set(auth(owner.token)),
      404,
      'NOT_FOUND',
    );
    await request(t.app)
      .post(`/api/stores/${store.id}/database`)
      .set(auth(owner.token))
      .send({ mode: 'managed' })
      .expect(202);
    const done = await waitForProvisioning(t.app, owner.token, store.id);
    expect(done).toEqual({
      jobId: `provision-${store.id}`,
      state: 'completed',
      progress: 100,
      step: 'done',
      attempts: expect.any(Number),
      error: null,
      schemaVersion: 1,
    });
  });

  test('connecting a store that is already active answers 409 ALREADY_PROVISIONED and changes nothing', async () => {
    const owner = await registerUser(t.app);
    const store = await provisionManagedStore(t.app, owner.token);
    const before = await t.ctx.master.models.StoreDatabase.findByPk(store.id, { rejectOnEmpty: true, raw: true });
    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/database`).set(auth(owner.token)).send({ mode: 'managed' }),
      409,
      'ALREADY_PROVISIONED',
    );
    expectProblem(
      await request(t.app)
        .post(`/api/stores/${store.id}/database`)
        .set(auth(owner.token))
        .send({ mode: 'external', connectionString: 'postgres://someone@127.0.0.1:1/elsewhere' }),
      409,
      'ALREADY_PROVISIONED',
    );
    expect(await t.ctx.master.models.StoreDatabase.findByPk(store.id, { raw: true })).toEqual(before);
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('active');
  });

  test('retrying a store whose provisioning did not fail answers 409', async () => {
    const owner = await registerUser(t.app);
    const pending = await createStoreViaApi(t.app, owner.token);
    expectProblem(
      await request(t.app).post(`/api/stores/${pending.id}/provisioning/retry`).set(auth(owner.token)),
      409,
      'CONFLICT',
    );
    const other = await registerUser(t.app);
    const active = await provisionManagedStore(t.app, other.token);
    expectProblem(
      await request(t.app).post(`/api/stores/${active.id}/provisioning/retry`).set(auth(other.token)),
      409,
      'CONFLICT',
    );
    expect((await t.ctx.master.models.Store.findByPk(active.id, { rejectOnEmpty: true })).status).toBe('active');
    expect((await t.ctx.master.models.Store.findByPk(pending.id, { rejectOnEmpty: true })).status).toBe(
      'pending_database',
    );
  });

  test('a staff member may follow provisioning but not connect a database (403); a non-member may do neither', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const staff = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: staff.user.id, role: 'staff' });
    const stranger = await registerUser(t.app);

    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/database`).set(auth(staff.token)).send({ mode: 'managed' }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/database`).set(auth(stranger.token)).send({ mode: 'managed' }),
      403,
      'FORBIDDEN',
    );
    expect(await t.ctx.master.models.StoreDatabase.findByPk(store.id)).toBeNull();
    expect(await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${store.id}`)).toBeUndefined();

    await request(t.app)
      .post(`/api/stores/${store.id}/database`)
      .set(auth(owner.token))
      .send({ mode: 'managed' })
      .expect(202);
    const seen = await waitForProvisioning(t.app, staff.token, store.id);
    expect(seen.state).toBe('completed');
    expectProblem(
      await request(t.app).get(`/api/stores/${store.id}/provisioning`).set(auth(stranger.token)),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/provisioning/retry`).set(auth(staff.token)),
      403,
      'FORBIDDEN',
    );
  });

  test('a malformed connect body answers 400 and queues nothing', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    for (const body of [
      {},
      { mode: 'cloud' },
      { mode: 'managed', server: 'x' },
      { mode: 'external', host: 'db.example.test', database: 'd' },
      { mode: 'external', host: 'db.example.test', port: 0, database: 'd', user: 'u', password: 'p' },
    ]) {
      expectProblem(
        await request(t.app).post(`/api/stores/${store.id}/database`).set(auth(owner.token)).send(body),
        400,
        'VALIDATION_FAILED',
      );
    }
    // (Its message names the postgres:// scheme, which expectProblem's leak check would take for a database URL.)
    const wrongScheme = await request(t.app)
      .post(`/api/stores/${store.id}/database`)
      .set(auth(owner.token))
      .send({ mode: 'external', connectionString: 'mysql://a@b/c' });
    expect(wrongScheme.status).toBe(400);
    expect(wrongScheme.body).toMatchObject({
      code: 'VALIDATION_FAILED',
      errors: [{ path: 'connectionString', message: expect.any(String) }],
    });
    expect(await t.ctx.master.models.StoreDatabase.findByPk(store.id)).toBeNull();
    expect(await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${store.id}`)).toBeUndefined();
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe(
      'pending_database',
    );
  });
});
