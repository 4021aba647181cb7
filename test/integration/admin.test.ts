import { randomUUID } from 'node:crypto';
import type { Express } from 'express';
import request from 'supertest';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../../src/app-context';
import { secretContext } from '../../src/lib/crypto';
import { ensureTenantDatabase } from '../../src/db/tenant-server-admin';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { TEST_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, createStoreViaApi, provisionManagedStore, queryWith, storeConnection } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/** Platform administration: who is an admin, the tenants and pools views, suspending stores, tenant migrations. */
const t = useSuite('admin', { WORKER: 'on' });
let api: RecordingClient;
let other: { ctx: AppContext; app: Express };
let admin: Awaited<ReturnType<typeof registerUser>>;
let owner: Awaited<ReturnType<typeof registerUser>>;
let shop: { id: string; host: string };
let second: { id: string };
let pending: { id: string };

beforeAll(async () => {
  api = recordingClient(t.app);
  other = await t.instance();
  admin = await registerAdmin(t);
  owner = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  const [a, b] = await Promise.all([
    provisionManagedStore(t.app, owner.token, { name: 'Admin A' }),
    provisionManagedStore(t.app, owner.token, { name: 'Admin B' }),
  ]);
  // The hostname the platform issued when the database became active.
  shop = { id: a.id, host: `${a.slug}.localhost` };
  second = { id: b.id };
  pending = { id: (await createStoreViaApi(t.app, owner.token, { name: 'Admin pending' })).id };
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

describe('platform admins', () => {
  test("an account is a platform_admin by the operator's grant (others are users), also after login", async () => {
    // Registered as a user, granted afterwards: the token from before the grant is an admin's now.
    expect(admin.user).toMatchObject({ role: 'user' });
    expect((await t.ctx.master.models.User.findByPk(admin.user.id, { rejectOnEmpty: true })).role).toBe(
      'platform_admin',
    );
    expect((await t.ctx.master.models.User.findByPk(owner.user.id, { rejectOnEmpty: true })).role).toBe('user');
    await api.get('/api/admin/pools').set(auth(admin.token)).expect(200);
    const login = await api
      .post('/api/auth/login')
      .send({ email: admin.user.email.toUpperCase(), password: admin.password })
      .expect(200);
    expect(login.body.user.role).toBe('platform_admin');
    admin.token = login.body.token;
  });

  test('admin routes answer 401 without a token and 403 FORBIDDEN to a user who is not a platform admin', async () => {
    for (const [method, path] of [
      ['get', '/api/admin/tenants'],
      ['get', '/api/admin/pools'],
      ['post', '/api/admin/tenants/migrate'],
      ['get', `/api/admin/tenants/migrate/${randomUUID()}`],
      ['post', `/api/admin/stores/${shop.id}/suspend`],
      ['post', `/api/admin/stores/${shop.id}/resume`],
    ] as const) {
      expectProblem(await api[method](path), 401, 'UNAUTHENTICATED');
      expectProblem(await api[method](path).set(auth(owner.token)), 403, 'FORBIDDEN');
    }
    expect((await t.ctx.master.models.Store.findByPk(shop.id, { rejectOnEmpty: true })).status).toBe('active');
  });
});

describe('views', () => {
  test('GET /api/admin/tenants lists every store, newest first, with its database state and server — never credentials', async () => {
    const res = await api.get('/api/admin/tenants').set(auth(admin.token)).expect(200);
    expect(res.body.nextCursor).toBeNull();
    const items = res.body.items as {
      id: string;
      status: string;
      database: Record<string, unknown> | null;
      pool: unknown;
    }[];
    expect(items).toHaveLength(3);
    // The pending store was made last; A and B were provisioned side by side.
    expect(items[0].id).toBe(pending.id);
    expect(new Set(items.slice(1).map((s) => s.id))).toEqual(new Set([shop.id, second.id]));
    const server = new URL(TEST_SERVER_URL);
    expect(items.find((s) => s.id === shop.id)).toMatchObject({
      name: 'Admin A',
      status: 'active',
      database: {
        mode: 'managed',
        server: `${server.hostname}:${server.port || 5432}`,
        status: 'ready',
        schemaVersion: 1,
        lastError: null,
      },
    });
    expect(items.find((s) => s.id === pending.id)).toMatchObject({
      status: 'pending_database',
      database: null,
      pool: null,
    });
    const conn = await storeConnection(t, shop.id);
    expect(res.text).not.toContain(conn.password);
    expect(res.text).not.toContain('credentials');

    // Paged with the API's cursors.
    const page1 = await api.get('/api/admin/tenants?limit=2').set(auth(admin.token)).expect(200);
    expect(page1.body.items).toHaveLength(2);
    const page2 = await api
      .get(`/api/admin/tenants?limit=2&cursor=${page1.body.nextCursor}`)
      .set(auth(admin.token))
      .expect(200);
    expect([...page1.body.items, ...page2.body.items].map((s: { id: string }) => s.id)).toEqual(items.map((s) => s.id));
    expect(page2.body.nextCursor).toBeNull();
  });

  test("GET /api/admin/pools shows the connection manager's state", async () => {
    await request(t.app).get('/api/store/info').set('Host', shop.host).expect(200);
    const res = await api.get('/api/admin/pools').set(auth(admin.token)).expect(200);
    expect(res.body).toMatchObject({
      handles: expect.any(Number),
      handlesMax: t.ctx.config.tenant.cacheMax,
      connections: expect.objectContaining({ open: expect.any(Number), max: t.ctx.config.tenant.connectionsMax }),
      hits: expect.any(Number),
      misses: expect.any(Number),
      evictions: expect.any(Number),
    });
    expect(res.body.handles).toBeGreaterThanOrEqual(1);
  });
});

describe('suspending a store', () => {
  const info = (app: Express) => request(app).get('/api/store/info').set('Host', shop.host);

  test('a suspended store answers 423 STORE_SUSPENDED on every instance at once; resumed, it answers again', async () => {
    // Both instances serve it (and hold a handle for it).
    await info(t.app).expect(200);
    await eventually(() => info(other.app).expect(200));

    const res = await api.post(`/api/admin/stores/${shop.id}/suspend`).set(auth(admin.token)).expect(200);
    expect(res.body).toEqual({ id: shop.id, status: 'suspended' });
    const row = await t.ctx.master.models.Store.findByPk(shop.id, { rejectOnEmpty: true });
    expect(row.status).toBe('suspended');
    expect(row.suspendedAt).toBeInstanceOf(Date);

    expectProblem(await info(t.app), 423, 'STORE_SUSPENDED');
    // The other instance dropped its handle on the Redis message (delivery takes a moment, never a TTL).
    await eventually(async () => expectProblem(await info(other.app), 423, 'STORE_SUSPENDED'), 1000);
    expectProblem(
      await request(t.app).get('/api/store/products').set('X-Store-Id', shop.id).set(auth(owner.token)),
      423,
      'STORE_SUSPENDED',
    );
    expect((await api.get(`/api/stores/${shop.id}`).set(auth(owner.token)).expect(200)).body.status).toBe('suspended');
    // Suspending twice changes nothing.
    await api.post(`/api/admin/stores/${shop.id}/suspend`).set(auth(admin.token)).expect(200);

    const resumed = await api.post(`/api/admin/stores/${shop.id}/resume`).set(auth(admin.token)).expect(200);
    expect(resumed.body).toEqual({ id: shop.id, status: 'active' });
    expect(await t.ctx.master.models.Store.findByPk(shop.id, { rejectOnEmpty: true, raw: true })).toMatchObject({
      status: 'active',
      suspendedAt: null,
    });
    await info(t.app).expect(200);
    await eventually(() => info(other.app).expect(200), 1000);

    const actions = await t.ctx.master.sequelize.query<{ action: string }>(
      `SELECT action FROM audit_log WHERE store_id = :id AND actor_user_id = :a ORDER BY id`,
      {
        replacements: { id: shop.id, a: admin.user.id },
        type: QueryTypes.SELECT,
      },
    );
    expect(actions.map((a) => a.action)).toEqual(['store.suspended', 'store.suspended', 'store.resumed']);
  });

  test('a store that was never provisioned resumes to pending_database; resuming an unsuspended store is 409; an unknown store 404', async () => {
    await api.post(`/api/admin/stores/${pending.id}/suspend`).set(auth(admin.token)).expect(200);
    expectProblem(
      await api.post(`/api/stores/${pending.id}/database`).set(auth(owner.token)).send({ mode: 'managed' }),
      423,
      'STORE_SUSPENDED',
    );
    expect(await t.ctx.master.models.StoreDatabase.findByPk(pending.id)).toBeNull();
    const resumed = await api.post(`/api/admin/stores/${pending.id}/resume`).set(auth(admin.token)).expect(200);
    expect(resumed.body).toEqual({ id: pending.id, status: 'pending_database' });

    expectProblem(await api.post(`/api/admin/stores/${second.id}/resume`).set(auth(admin.token)), 409, 'CONFLICT');
    expectProblem(
      await api.post(`/api/admin/stores/${randomUUID()}/suspend`).set(auth(admin.token)),
      404,
      'STORE_NOT_FOUND',
    );
  });
});

describe('tenant migrations', () => {
  test('POST /api/admin/tenants/migrate answers 202 {runId}; the run brings every active store to the newest schema', async () => {
    // One more active store whose database exists but was never migrated (schema version 0).
    const behind = await createStoreViaApi(t.app, admin.token, { name: 'Behind' });
    const name = `${t.ctx.config.provisioning.databasePrefix}${behind.id.replace(/-/g, '')}`;
    const password = randomUUID();
    await ensureTenantDatabase(t.ctx.adminPools, TEST_SERVER_URL, { database: name, role: name, password });
    const server = new URL(TEST_SERVER_URL);
    const connection = {
      host: server.hostname,
      port: Number(server.port || 5432),
      database: name,
      user: name,
      password,
    };
    await t.ctx.master.models.StoreDatabase.create({
      storeId: behind.id,
      mode: 'managed',
      server: `${connection.host}:${connection.port}`,
      databaseName: name,
      credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(behind.id)),
      status: 'ready',
      schemaVersion: 0,
    });
    await t.ctx.master.models.Store.update({ status: 'active' }, { where: { id: behind.id } });
    // A suspended store is not part of the run.
    await api.post(`/api/admin/stores/${second.id}/suspend`).set(auth(admin.token)).expect(200);

    const [{ n: active }] = await t.ctx.master.sequelize.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM stores s JOIN store_databases d ON d.store_id = s.id WHERE s.status = 'active' AND d.status = 'ready'`,
      { type: QueryTypes.SELECT },
    );
    expect(active).toBe(2); // shop and behind

    const started = await api.post('/api/admin/tenants/migrate').set(auth(admin.token)).expect(202);
    expect(started.body).toEqual({ runId: expect.any(String) });
    const run = await eventually(async () => {
      const res = await api.get(`/api/admin/tenants/migrate/${started.body.runId}`).set(auth(admin.token)).expect(200);
      if (res.body.state !== 'completed') throw new Error(`run is ${JSON.stringify(res.body)}`);
      return res.body;
    }, 20000);
    // Behind migrated; the shop, at the newest version in the master's records, skipped without a connection.
    expect(run).toEqual({
      runId: started.body.runId,
      state: 'completed',
      targetVersion: 1,
      total: active,
      pending: 0,
      migrated: 1,
      skipped: 1,
      failed: 0,
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      failures: [],
    });

    expect((await t.ctx.master.models.StoreDatabase.findByPk(behind.id, { rejectOnEmpty: true })).schemaVersion).toBe(
      1,
    );
    expect(await queryWith(connection, 'SELECT id FROM migrations WHERE id > 0 ORDER BY id')).toEqual([{ id: 1 }]);
    expect((await t.ctx.master.models.StoreDatabase.findByPk(shop.id, { rejectOnEmpty: true })).schemaVersion).toBe(1);

    expectProblem(await api.get('/api/admin/tenants/migrate/no-such-run').set(auth(admin.token)), 404, 'NOT_FOUND');
    await api.post(`/api/admin/stores/${second.id}/resume`).set(auth(admin.token)).expect(200);
  });
});

describe('the queue board', () => {
  test('GET /admin/queues: 401 without a token, 403 for a user, 200 for a platform admin', async () => {
    expectProblem(await api.get('/admin/queues'), 401, 'UNAUTHENTICATED');
    expectProblem(await api.get('/admin/queues').set(auth(owner.token)), 403, 'FORBIDDEN');
    const res = await request(t.app).get('/admin/queues').set(auth(admin.token)).expect(200);
    expect(res.headers['content-type']).toMatch(/text\/html/);
  });
});
