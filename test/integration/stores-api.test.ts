import { randomUUID } from 'node:crypto';
import type { Express } from 'express';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../../src/app-context';
import { secretContext } from '../../src/lib/crypto';
import { registerUser } from '../helpers/app';
import { countRows, eventually } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import {
  auth,
  createStoreViaApi,
  provisionManagedStore,
  storeConnection,
  uniqueSlug,
  waitForProvisioning,
} from '../helpers/stores';
import request from 'supertest';
import { claimHostname, type TestDnsServer } from '../helpers/dns-server';
import { useSuite } from '../helpers/suite';

let dns: TestDnsServer;
const t = useSuite('stores', async (s) => {
  dns = await s.dns();
  return { WORKER: 'on', DNS_SERVERS: dns.address };
});
let api: RecordingClient;
/** A second API instance on the same master DB and Redis (a load balancer's other target). */
let other: { ctx: AppContext; app: Express };

type User = Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  api = recordingClient(t.app);
  other = await t.instance();
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

/** A user on the pro plan (5 stores). */
async function proUser(): Promise<User> {
  const user = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: user.user.id, planId: 'pro' });
  return user;
}

async function addMember(storeId: string, role: 'admin' | 'staff'): Promise<User> {
  const user = await registerUser(t.app);
  await t.ctx.master.models.StoreMember.create({ storeId, userId: user.user.id, role });
  return user;
}

const storeInfo = (app: Express, host: string) => request(app).get('/api/store/info').set('Host', host);

describe('creating a store', () => {
  test('a new store answers 201 with status pending_database, the caller as owner, and its registry rows exist', async () => {
    const owner = await registerUser(t.app);
    const slug = uniqueSlug('corner');
    const res = await api.post('/api/stores').set(auth(owner.token)).send({ name: '  Corner Shop ', slug }).expect(201);
    expect(res.body).toEqual({
      id: expect.any(String),
      name: 'Corner Shop',
      slug,
      status: 'pending_database',
      role: 'owner',
      hostnames: [],
      database: null,
      createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
    });
    const id = res.body.id as string;
    const m = t.ctx.master.models;
    const row = await m.Store.findByPk(id, { rejectOnEmpty: true });
    expect(row).toMatchObject({
      name: 'Corner Shop',
      slug,
      status: 'pending_database',
      ownerId: owner.user.id,
      deletedAt: null,
    });
    expect(await m.StoreMember.findAll({ where: { storeId: id }, raw: true })).toEqual([
      expect.objectContaining({ userId: owner.user.id, role: 'owner' }),
    ]);
    const balance = await m.CreditBalance.findByPk(id, { rejectOnEmpty: true });
    expect(Number(balance.balance)).toBe(0);
    expect(await m.StoreDatabase.findByPk(id)).toBeNull();
    expect(
      await countRows(t, 'audit_log', "store_id = :id AND action = 'store.created' AND actor_user_id = :u", {
        id,
        u: owner.user.id,
      }),
    ).toBe(1);
  });

  test('a slug another store already uses answers 409 SLUG_TAKEN and creates nothing', async () => {
    const [first, second] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
    const slug = uniqueSlug('taken');
    await createStoreViaApi(t.app, first.token, { slug });
    const before = await countRows(t, 'stores');
    expectProblem(
      await api.post('/api/stores').set(auth(second.token)).send({ name: 'Copycat', slug }),
      409,
      'SLUG_TAKEN',
    );
    expect(await countRows(t, 'stores')).toBe(before);
    expect(await countRows(t, 'store_members', 'user_id = :u', { u: second.user.id })).toBe(0);
    expect(await countRows(t, 'stores', 'slug = :slug AND owner_id = :u', { slug, u: first.user.id })).toBe(1);
  });

  test('a malformed slug or body answers 400 naming the field and creates nothing', async () => {
    const owner = await registerUser(t.app);
    const before = await countRows(t, 'stores');
    for (const slug of ['ab', 'Corner-Shop', 'corner_shop', 'corner shop', 'corner.shop', 'x'.repeat(64), '', 42]) {
      expectValidationErrors(await api.post('/api/stores').set(auth(owner.token)).send({ name: 'Shop', slug }), [
        'slug',
      ]);
    }
    expectValidationErrors(await api.post('/api/stores').set(auth(owner.token)).send({ slug: uniqueSlug() }), ['name']);
    expectValidationErrors(
      await api.post('/api/stores').set(auth(owner.token)).send({ name: '   ', slug: uniqueSlug() }),
      ['name'],
    );
    expectProblem(
      await api.post('/api/stores').set(auth(owner.token)).send({ name: 'Shop', slug: uniqueSlug(), plan: 'agency' }),
      400,
      'VALIDATION_FAILED',
    );
    expect(await countRows(t, 'stores')).toBe(before);
  });

  test('without a token the store is not created (401)', async () => {
    expectProblem(await api.post('/api/stores').send({ name: 'Shop', slug: uniqueSlug() }), 401, 'UNAUTHENTICATED');
  });

  test("the free plan's second store answers 403 PLAN_LIMIT_REACHED and is not created", async () => {
    const owner = await registerUser(t.app);
    await createStoreViaApi(t.app, owner.token);
    const slug = uniqueSlug('second');
    expectProblem(
      await api.post('/api/stores').set(auth(owner.token)).send({ name: 'Second', slug }),
      403,
      'PLAN_LIMIT_REACHED',
    );
    expect(await countRows(t, 'stores', 'owner_id = :u', { u: owner.user.id })).toBe(1);
    expect(await countRows(t, 'stores', 'slug = :slug', { slug })).toBe(0);
  });

  test('a pro subscription allows five stores; the sixth answers 403 PLAN_LIMIT_REACHED', async () => {
    const owner = await proUser();
    for (let i = 0; i < 5; i++) await createStoreViaApi(t.app, owner.token, { name: `Pro ${i}` });
    expectProblem(
      await api.post('/api/stores').set(auth(owner.token)).send({ name: 'Pro 6', slug: uniqueSlug() }),
      403,
      'PLAN_LIMIT_REACHED',
    );
    expect(await countRows(t, 'stores', 'owner_id = :u', { u: owner.user.id })).toBe(5);
  });

  test('two creations at once on the free plan: exactly one store is created', async () => {
    const owner = await registerUser(t.app);
    const answers = await Promise.all(
      [0, 1, 2].map((i) =>
        api
          .post('/api/stores')
          .set(auth(owner.token))
          .send({ name: `Race ${i}`, slug: uniqueSlug('race') }),
      ),
    );
    expect(answers.map((r) => r.status).sort()).toEqual([201, 403, 403]);
    expect(await countRows(t, 'stores', 'owner_id = :u', { u: owner.user.id })).toBe(1);
  });

  test('a deleted store frees its place on the plan, but restoring it past the limit answers 403 PLAN_LIMIT_REACHED', async () => {
    const owner = await registerUser(t.app);
    const first = await createStoreViaApi(t.app, owner.token);
    await api.delete(`/api/stores/${first.id}`).set(auth(owner.token)).expect(202);
    const second = await createStoreViaApi(t.app, owner.token);
    expectProblem(await api.post(`/api/stores/${first.id}/restore`).set(auth(owner.token)), 403, 'PLAN_LIMIT_REACHED');
    expect((await t.ctx.master.models.Store.findByPk(first.id, { rejectOnEmpty: true })).status).toBe('deleted');
    // Once the other store is gone, the first may come back.
    await api.delete(`/api/stores/${second.id}`).set(auth(owner.token)).expect(202);
    await api.post(`/api/stores/${first.id}/restore`).set(auth(owner.token)).expect(200);
  });
});

describe('listing and reading stores', () => {
  test("GET /api/stores lists only the caller's stores, with the caller's role, oldest first and without deleted ones", async () => {
    const [a, b] = await Promise.all([proUser(), registerUser(t.app)]);
    const a1 = await createStoreViaApi(t.app, a.token, { name: 'A one' });
    const a2 = await createStoreViaApi(t.app, a.token, { name: 'A two' });
    const a3 = await createStoreViaApi(t.app, a.token, { name: 'A three (deleted)' });
    await api.delete(`/api/stores/${a3.id}`).set(auth(a.token)).expect(202);
    const b1 = await createStoreViaApi(t.app, b.token, { name: 'B one' });
    await t.ctx.master.models.StoreMember.create({ storeId: b1.id, userId: a.user.id, role: 'staff' });

    const list = await api.get('/api/stores').set(auth(a.token)).expect(200);
    expect(list.body).toEqual({
      items: [
        { id: a1.id, name: 'A one', slug: a1.slug, status: 'pending_database', role: 'owner' },
        { id: a2.id, name: 'A two', slug: a2.slug, status: 'pending_database', role: 'owner' },
        { id: b1.id, name: 'B one', slug: b1.slug, status: 'pending_database', role: 'staff' },
      ],
    });
    const other = await api.get('/api/stores').set(auth(b.token)).expect(200);
    expect(other.body.items.map((s: { id: string }) => s.id)).toEqual([b1.id]);
    const none = await api
      .get('/api/stores')
      .set(auth((await registerUser(t.app)).token))
      .expect(200);
    expect(none.body).toEqual({ items: [] });
  });

  test('GET /api/stores/:id shows hostnames and database (null, then set once provisioned) and never credentials', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token, { name: 'Readable' });
    const before = await api.get(`/api/stores/${store.id}`).set(auth(owner.token)).expect(200);
    expect(before.body).toEqual({ ...store, hostnames: [], database: null });

    await api.post(`/api/stores/${store.id}/database`).set(auth(owner.token)).send({ mode: 'managed' }).expect(202);
    await waitForProvisioning(t.app, owner.token, store.id);
    await claimHostname(t.app, owner.token, store.id, 'www.readable.test', dns);
    await api
      .post(`/api/stores/${store.id}/hostnames`)
      .set(auth(owner.token))
      .send({ hostname: 'readable.test' })
      .expect(201);

    const after = await api.get(`/api/stores/${store.id}`).set(auth(owner.token)).expect(200);
    expect(after.body).toEqual({
      ...store,
      status: 'active',
      // Pending claims are listed too; the platform issued <slug>.<STORE_DOMAIN> when the database became active.
      hostnames: ['readable.test', `${store.slug}.localhost`, 'www.readable.test'].sort(),
      database: { mode: 'managed', status: 'ready', schemaVersion: 1 },
    });
    const connection = await storeConnection(t, store.id);
    for (const secret of [
      connection.password,
      connection.user,
      connection.database,
      `${connection.host}:${connection.port}`,
      'credentials',
      'password',
    ]) {
      expect(after.text).not.toContain(secret);
    }
  });

  test('a staff member may read the store; a non-member gets 403; an unknown id 404 STORE_NOT_FOUND; a malformed id 400', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const staff = await addMember(store.id, 'staff');
    const staffView = await api.get(`/api/stores/${store.id}`).set(auth(staff.token)).expect(200);
    expect(staffView.body).toMatchObject({ id: store.id, role: 'staff' });

    const stranger = await registerUser(t.app);
    expectProblem(await api.get(`/api/stores/${store.id}`).set(auth(stranger.token)), 403, 'FORBIDDEN');
    expectProblem(await api.get(`/api/stores/${randomUUID()}`).set(auth(owner.token)), 404, 'STORE_NOT_FOUND');
    expectValidationErrors(await api.get('/api/stores/not-a-uuid').set(auth(owner.token)), ['id']);
  });
});

describe('renaming a store', () => {
  test("the owner renames a store: the registry and the store's own database carry the new name", async () => {
    const owner = await registerUser(t.app);
    const store = await provisionManagedStore(t.app, owner.token, { name: 'Old Name' });
    await claimHostname(t.app, owner.token, store.id, 'rename.stores.test', dns);
    const res = await api
      .patch(`/api/stores/${store.id}`)
      .set(auth(owner.token))
      .send({ name: 'New Name' })
      .expect(200);
    expect(res.body).toMatchObject({ id: store.id, name: 'New Name', status: 'active', role: 'owner' });
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).name).toBe('New Name');
    const info = await storeInfo(t.app, 'rename.stores.test').expect(200);
    expect(info.body).toMatchObject({ id: store.id, name: 'New Name' });
  });

  test('a store admin may rename; a staff member and a non-member get 403 and the name stays', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token, { name: 'Kept' });
    const admin = await addMember(store.id, 'admin');
    const staff = await addMember(store.id, 'staff');
    const stranger = await registerUser(t.app);

    expectProblem(
      await api.patch(`/api/stores/${store.id}`).set(auth(staff.token)).send({ name: 'By staff' }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await api.patch(`/api/stores/${store.id}`).set(auth(stranger.token)).send({ name: 'By stranger' }),
      403,
      'FORBIDDEN',
    );
    expectValidationErrors(await api.patch(`/api/stores/${store.id}`).set(auth(owner.token)).send({ name: '' }), [
      'name',
    ]);
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).name).toBe('Kept');

    const res = await api
      .patch(`/api/stores/${store.id}`)
      .set(auth(admin.token))
      .send({ name: 'By admin' })
      .expect(200);
    expect(res.body).toMatchObject({ name: 'By admin', role: 'admin' });
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).name).toBe('By admin');
  });
});

describe('deleting and restoring a store', () => {
  test('DELETE answers 202 deleted; the store disappears from the API and its host answers 404 on every instance', async () => {
    const owner = await registerUser(t.app);
    const store = await provisionManagedStore(t.app, owner.token);
    const host = 'gone.stores.test';
    await claimHostname(t.app, owner.token, store.id, host, dns);
    // Both instances serve it (and cache its handle and host).
    await storeInfo(t.app, host).expect(200);
    await eventually(() => storeInfo(other.app, host).expect(200));

    const admin = await addMember(store.id, 'admin');
    expectProblem(await api.delete(`/api/stores/${store.id}`).set(auth(admin.token)), 403, 'FORBIDDEN');

    const res = await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);
    expect(res.body).toEqual({ id: store.id, status: 'deleted', restorableUntil: expect.any(String) });
    const row = await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true });
    expect(row.status).toBe('deleted');
    expect(new Date(res.body.restorableUntil).getTime()).toBe(row.deletedAt!.getTime() + 30 * 86400_000);
    // The database is kept for the restore window.
    expect((await t.ctx.master.models.StoreDatabase.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('ready');

    expectProblem(await storeInfo(t.app, host), 404, 'STORE_NOT_FOUND');
    await eventually(async () => expectProblem(await storeInfo(other.app, host), 404, 'STORE_NOT_FOUND'));
    expectProblem(await api.get(`/api/stores/${store.id}`).set(auth(owner.token)), 404, 'STORE_NOT_FOUND');
    expectProblem(
      await api.patch(`/api/stores/${store.id}`).set(auth(owner.token)).send({ name: 'x' }),
      404,
      'STORE_NOT_FOUND',
    );
    expect((await api.get('/api/stores').set(auth(owner.token)).expect(200)).body.items).toEqual([]);
  });

  test('restoring within 30 days brings the store back to its previous status and its host answers again', async () => {
    const owner = await proUser();
    const active = await provisionManagedStore(t.app, owner.token);
    const host = 'back.stores.test';
    await claimHostname(t.app, owner.token, active.id, host, dns);
    const pending = await createStoreViaApi(t.app, owner.token);
    for (const s of [active, pending]) await api.delete(`/api/stores/${s.id}`).set(auth(owner.token)).expect(202);
    expectProblem(await storeInfo(t.app, host), 404, 'STORE_NOT_FOUND');

    const restored = await api.post(`/api/stores/${active.id}/restore`).set(auth(owner.token)).expect(200);
    expect(restored.body).toMatchObject({
      id: active.id,
      status: 'active',
      hostnames: [`${active.slug}.localhost`, host].sort(),
      database: { mode: 'managed', status: 'ready', schemaVersion: 1 },
    });
    const row = await t.ctx.master.models.Store.findByPk(active.id, { rejectOnEmpty: true });
    expect(row).toMatchObject({ status: 'active', deletedAt: null });
    await storeInfo(t.app, host).expect(200);

    const back = await api.post(`/api/stores/${pending.id}/restore`).set(auth(owner.token)).expect(200);
    expect(back.body).toMatchObject({ status: 'pending_database', database: null });
    expect((await t.ctx.master.models.Store.findByPk(pending.id, { rejectOnEmpty: true })).status).toBe(
      'pending_database',
    );

    // Restoring a store that is not deleted is a conflict.
    expectProblem(await api.post(`/api/stores/${active.id}/restore`).set(auth(owner.token)), 409, 'CONFLICT');
  });

  test('restoring more than 30 days after the deletion answers 409 and the store stays deleted', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);
    await t.ctx.master.sequelize.query(`UPDATE stores SET deleted_at = now() - interval '31 days' WHERE id = :id`, {
      replacements: { id: store.id },
    });
    expectProblem(await api.post(`/api/stores/${store.id}/restore`).set(auth(owner.token)), 409, 'CONFLICT');
    const row = await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true });
    expect(row.status).toBe('deleted');
    expect(Date.now() - row.deletedAt!.getTime()).toBeGreaterThan(30 * 86400_000);
  });
});

describe('Stripe keys', () => {
  const keys = {
    publishableKey: 'pk_test_51PublishableKey0123',
    secretKey: 'sk_test_51SuperSecretKeyAbCd9876',
    webhookSecret: 'whsec_WebhookSecret0123456',
  };

  test('PUT answers 200 with only the publishable key, the last 4 of the secret and the time; the secrets are stored encrypted', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const res = await api
      .put(`/api/stores/${store.id}/integrations/stripe`)
      .set(auth(owner.token))
      .send(keys)
      .expect(200);
    expect(res.body).toEqual({
      publishableKey: keys.publishableKey,
      secretKeyLast4: '9876',
      configuredAt: expect.any(String),
    });
    expect(res.text).not.toContain(keys.secretKey);
    expect(res.text).not.toContain(keys.webhookSecret);

    const rows = await t.ctx.master.sequelize.query<{
      secrets: string;
      public_config: Record<string, unknown>;
      configured_at: Date;
    }>(
      `SELECT secrets, public_config, configured_at FROM store_integrations WHERE store_id = :id AND provider = 'stripe'`,
      { replacements: { id: store.id }, type: QueryTypes.SELECT },
    );
    expect(rows).toHaveLength(1);
    const [row] = rows;
    expect(row.secrets).not.toContain(keys.secretKey);
    expect(row.secrets).not.toContain(keys.webhookSecret);
    expect(row.secrets).not.toContain('SuperSecret');
    expect(JSON.stringify(row.public_config)).not.toContain(keys.secretKey);
    expect(t.ctx.encryptor.decryptJson(row.secrets, secretContext.storeIntegration(store.id, 'stripe'))).toEqual({
      secretKey: keys.secretKey,
      webhookSecret: keys.webhookSecret,
    });
    expect(new Date(row.configured_at).toISOString()).toBe(res.body.configuredAt);

    // New keys replace the old ones.
    const next = { publishableKey: 'pk_live_51OtherPublishable', secretKey: 'rk_live_51RestrictedKeyWxYz1111' };
    await api.put(`/api/stores/${store.id}/integrations/stripe`).set(auth(owner.token)).send(next).expect(200);
    const [replaced] = await t.ctx.master.sequelize.query<{ secrets: string }>(
      `SELECT secrets FROM store_integrations WHERE store_id = :id`,
      { replacements: { id: store.id }, type: QueryTypes.SELECT },
    );
    expect(t.ctx.encryptor.decryptJson(replaced.secrets, secretContext.storeIntegration(store.id, 'stripe'))).toEqual({
      secretKey: next.secretKey,
      webhookSecret: null,
    });
    expect(await countRows(t, 'store_integrations', 'store_id = :id', { id: store.id })).toBe(1);
  });

  test('keys of the wrong format answer 400 naming the field and nothing is stored; staff get 403', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const put = (body: unknown, token = owner.token) =>
      api
        .put(`/api/stores/${store.id}/integrations/stripe`)
        .set(auth(token))
        .send(body as object);
    expectValidationErrors(await put({ ...keys, publishableKey: keys.secretKey }), ['publishableKey']);
    expectValidationErrors(await put({ ...keys, secretKey: keys.publishableKey }), ['secretKey']);
    expectValidationErrors(await put({ ...keys, secretKey: 'sk_test_short' }), ['secretKey']);
    expectValidationErrors(await put({ ...keys, webhookSecret: 'not-a-webhook-secret' }), ['webhookSecret']);
    expectValidationErrors(await put({ publishableKey: keys.publishableKey }), ['secretKey']);
    expectProblem(await put({ ...keys, extra: true }), 400, 'VALIDATION_FAILED');
    const staff = await addMember(store.id, 'staff');
    expectProblem(await put(keys, staff.token), 403, 'FORBIDDEN');
    expect(await countRows(t, 'store_integrations', 'store_id = :id', { id: store.id })).toBe(0);
  });
});
