import { QueryTypes } from 'sequelize';
import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { claimHostname, type TestDnsServer } from '../helpers/dns-server';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { auth, provisionManagedStore, storeConnection } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * The audit trail: GET /api/stores/:id/audit (the store's owner and admins) and GET /api/admin/audit (platform
 * admins). What is recorded — logins, failed ones, logouts, the database connected, a hostname verified,
 * suspension, credit changes — appears once, with who did it, and never a secret.
 */
let dns: TestDnsServer;
const t = useSuite('audit-trail', async (s) => {
  dns = await s.dns();
  return { WORKER: 'on', DNS_SERVERS: dns.address };
});

interface Entry {
  id: string;
  at: string;
  actor: { id: string; email: string | null } | null;
  action: string;
  target: { type: string | null; id: string | null };
  storeId: string | null;
  detail: Record<string, unknown>;
  requestId: string | null;
}
type User = Awaited<ReturnType<typeof registerUser>>;

let api: RecordingClient;
let admin: User;
let owner: User;
let ownerLogin: { token: string };
let store: { id: string };
const STRIPE_SECRET = `sk_test_${randomUUID().replace(/-/g, '')}`;
const STRIPE_WEBHOOK_SECRET = `whsec_${randomUUID().replace(/-/g, '')}`;
const WRONG_PASSWORD = `wrong-${randomUUID()}`;
const UNKNOWN_EMAIL = `nobody-${randomUUID()}@example.test`;
const STAFF_PASSWORD = `staff-${randomUUID()}`;

beforeAll(async () => {
  api = recordingClient(t.app);
  admin = await registerAdmin(t);
  owner = await registerUser(t.app);
  const login = (email: string, password: string) => request(t.app).post('/api/auth/login').send({ email, password });
  ownerLogin = (await login(owner.user.email, owner.password).expect(200)).body;
  await login(owner.user.email, WRONG_PASSWORD).expect(401);
  await login(UNKNOWN_EMAIL, WRONG_PASSWORD).expect(401);
  // The login's token is revoked: the owner goes on with the registration's.
  await api.post('/api/auth/logout').set(auth(ownerLogin.token)).expect(204);

  store = await provisionManagedStore(t.app, owner.token, { name: 'Audited' });
  await claimHostname(t.app, owner.token, store.id, 'audited-shop.example.com', dns);
  await api
    .put(`/api/stores/${store.id}/integrations/stripe`)
    .set(auth(owner.token))
    .send({ publishableKey: 'pk_test_abcdefgh1234', secretKey: STRIPE_SECRET, webhookSecret: STRIPE_WEBHOOK_SECRET })
    .expect(200);
  await api
    .post(`/api/stores/${store.id}/credits/purchase`)
    .set(auth(owner.token))
    .send({ amount: 500, idempotencyKey: randomUUID() })
    .expect(201);
  const [cost] = (await api.get('/api/credits/costs').expect(200)).body.items as { service: string }[];
  await api
    .post(`/api/stores/${store.id}/credits/spend`)
    .set(auth(owner.token))
    .send({ service: cost.service, quantity: 1, idempotencyKey: randomUUID() })
    .expect(201);
  await api
    .post(`/api/admin/stores/${store.id}/credits/adjust`)
    .set(auth(admin.token))
    .send({ amount: 25, reason: 'goodwill' })
    .expect(201);
  await request(t.app)
    .post('/api/store/staff')
    .set('X-Store-Id', store.id)
    .set(auth(owner.token))
    .send({ email: 'clerk@example.test', name: 'Clerk', password: STAFF_PASSWORD, role: 'staff' })
    .expect(201);
  await api.post(`/api/admin/stores/${store.id}/suspend`).set(auth(admin.token)).expect(200);
  await api.post(`/api/admin/stores/${store.id}/resume`).set(auth(admin.token)).expect(200);
}, 60_000);
t.checkAtEnd(() => expectNoLeaks(api.responses));

const storeTrail = (query = '', token = owner.token, storeId = store.id) =>
  api.get(`/api/stores/${storeId}/audit${query}`).set(auth(token));
const adminTrail = (query = '', token = admin.token) => api.get(`/api/admin/audit${query}`).set(auth(token));

/** Every entry of a trail, page by page (`limit` per page). */
async function everyEntry(get: (query: string) => request.Test, query: string, limit: number): Promise<Entry[]> {
  const entries: Entry[] = [];
  let cursor: string | null = null;
  do {
    const res: request.Response = await get(
      `?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    ).expect(200);
    expect(res.body.items.length).toBeLessThanOrEqual(limit);
    entries.push(...res.body.items);
    cursor = res.body.nextCursor;
  } while (cursor);
  return entries;
}

const only = (entries: Entry[], action: string) => entries.filter((e) => e.action === action);

describe("a store's audit trail", () => {
  test('each change appears once, newest first, with the member or platform admin who made it', async () => {
    const entries = await everyEntry((q) => storeTrail(q), '', 100);
    const byOwner = { id: owner.user.id, email: owner.user.email };
    const expected: [string, Entry['actor']][] = [
      ['store.created', byOwner],
      ['store.database.connected', byOwner],
      ['store.hostname.added', byOwner],
      ['store.hostname.verified', byOwner],
      ['store.integration.stripe.configured', byOwner],
      ['credits.purchase', byOwner],
      ['credits.spend', byOwner],
      ['store.staff.added', byOwner],
      // Platform staff are not named to the store's members.
      ['credits.adjustment', { id: admin.user.id, email: null }],
      ['store.suspended', { id: admin.user.id, email: null }],
      ['store.resumed', { id: admin.user.id, email: null }],
    ];
    for (const [action, actor] of expected) {
      const found = only(entries, action);
      expect({ action, count: found.length }).toEqual({ action, count: 1 });
      expect({ action, actor: found[0].actor }).toEqual({ action, actor });
      expect(found[0].storeId).toBe(store.id);
    }
    expect(only(entries, 'store.hostname.verified')[0].target).toEqual({
      type: 'hostname',
      id: 'audited-shop.example.com',
    });
    expect(only(entries, 'store.staff.added')[0].detail).toEqual({ role: 'staff' });
    expect(only(entries, 'credits.spend')[0].detail).toMatchObject({ amount: expect.any(Number), quantity: 1 });
    // Logins are the account's, not the store's.
    expect(entries.filter((e) => e.action.startsWith('auth.'))).toEqual([]);
    const order = entries.map((e) => [e.at, BigInt(e.id)] as const);
    for (let i = 1; i < order.length; i++) {
      const [at, id] = order[i];
      const [prevAt, prevId] = order[i - 1];
      expect(at < prevAt || (at === prevAt && id < prevId)).toBe(true);
    }
  });

  test('pages of 3 walk the same entries as one page; the filters narrow them', async () => {
    const all = await everyEntry((q) => storeTrail(q), '', 100);
    const paged = await everyEntry((q) => storeTrail(q), '', 3);
    expect(paged.map((e) => e.id)).toEqual(all.map((e) => e.id));

    const suspended = await everyEntry((q) => storeTrail(q), '&action=store.suspended', 3);
    expect(suspended.map((e) => e.action)).toEqual(['store.suspended']);
    const credits = await everyEntry((q) => storeTrail(q), '&action=credits.*', 1);
    expect(credits.map((e) => e.action).sort()).toEqual(['credits.adjustment', 'credits.purchase', 'credits.spend']);

    // A time window: from the suspension on, the resume and the suspension; before it, everything else.
    const at = only(all, 'store.suspended')[0].at;
    const since = await everyEntry((q) => storeTrail(q), `&from=${encodeURIComponent(at)}`, 100);
    expect(since.map((e) => e.action).sort()).toEqual(['store.resumed', 'store.suspended']);
    const before = await everyEntry((q) => storeTrail(q), `&to=${encodeURIComponent(at)}`, 100);
    expect(before.length).toBe(all.length - 2);
    expect((await storeTrail('?from=2999-01-01').expect(200)).body).toEqual({ items: [], nextCursor: null });
  });

  test('bad filters → 400 VALIDATION_FAILED', async () => {
    expectValidationErrors(await storeTrail('?action=DROP%20TABLE'), ['action']);
    expectValidationErrors(await storeTrail('?action=store.*.x'), ['action']);
    expectValidationErrors(await storeTrail('?from=yesterday'), ['from']);
    expectValidationErrors(await storeTrail('?from=2026-03-02&to=2026-03-01'), ['from']);
    expectValidationErrors(await storeTrail('?limit=0'), ['limit']);
    expectValidationErrors(await storeTrail('?actor=me'), ['actor']);
    expectProblem(await storeTrail('?cursor=bm90LWEtY3Vyc29y'), 400, 'VALIDATION_FAILED');
    // A cursor of a list with UUID ids is not one of this list.
    const uuidCursor = Buffer.from(JSON.stringify(['2026-01-01 00:00:00+00', randomUUID()])).toString('base64url');
    expectProblem(await storeTrail(`?cursor=${uuidCursor}`), 400, 'VALIDATION_FAILED');
  });

  test("another store's owner, a staff member and a store token get 403; no token 401", async () => {
    const stranger = await registerUser(t.app);
    expectProblem(await storeTrail('', stranger.token), 403, 'FORBIDDEN');
    const member = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: member.user.id, role: 'staff' });
    expectProblem(await storeTrail('', member.token), 403, 'FORBIDDEN');
    expectProblem(await api.get(`/api/stores/${store.id}/audit`), 401, 'UNAUTHENTICATED');
    expectProblem(await storeTrail('', owner.token, randomUUID()), 404, 'STORE_NOT_FOUND');
    // A store admin reads it.
    const storeAdmin = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: storeAdmin.user.id, role: 'admin' });
    await storeTrail('', storeAdmin.token).expect(200);
  });
});

describe('the platform audit trail', () => {
  test('logins, failed logins and logouts are there once, with the account; only platform admins read it', async () => {
    const entries = await everyEntry((q) => adminTrail(q), '&action=auth.*', 100);
    const mine = entries.filter((e) => e.target.id === owner.user.id || e.target.id === UNKNOWN_EMAIL);
    expect(only(mine, 'auth.login.succeeded')).toEqual([
      expect.objectContaining({
        actor: { id: owner.user.id, email: owner.user.email },
        target: { type: 'user', id: owner.user.id },
      }),
    ]);
    expect(only(mine, 'auth.login.failed').map((e) => [e.actor, e.target, e.detail])).toEqual(
      expect.arrayContaining([
        [null, { type: 'user', id: owner.user.id }, { reason: 'wrong_password' }],
        [null, { type: 'email', id: UNKNOWN_EMAIL }, { reason: 'unknown_email' }],
      ]),
    );
    expect(only(mine, 'auth.login.failed')).toHaveLength(2);
    const revoked = only(entries, 'auth.token.revoked').filter((e) => e.actor?.id === owner.user.id);
    expect(revoked).toHaveLength(1);
    expect(revoked[0].detail).toEqual({ reason: 'logout' });

    const ofStore = await everyEntry((q) => adminTrail(q), `&storeId=${store.id}`, 100);
    expect(new Set(ofStore.map((e) => e.storeId))).toEqual(new Set([store.id]));
    // The admin's own view names the platform staff.
    expect(only(ofStore, 'store.suspended')[0].actor).toEqual({ id: admin.user.id, email: admin.user.email });
    const byAdmin = await everyEntry((q) => adminTrail(q), `&actorId=${admin.user.id}`, 100);
    expect(byAdmin.map((e) => e.action).sort()).toEqual(
      expect.arrayContaining(['credits.adjustment', 'store.resumed', 'store.suspended']),
    );
    expect(byAdmin.every((e) => e.actor?.id === admin.user.id)).toBe(true);

    expectProblem(await adminTrail('', owner.token), 403, 'FORBIDDEN');
    expectValidationErrors(await adminTrail('?storeId=42'), ['storeId']);
  });

  test('no row holds a password, key, token or connection string', async () => {
    const entries = await everyEntry((q) => adminTrail(q), '', 100);
    expect(entries.length).toBeGreaterThan(15);
    const tenant = await storeConnection(t, store.id);
    const secrets = [
      owner.password,
      admin.password,
      WRONG_PASSWORD,
      STAFF_PASSWORD,
      STRIPE_SECRET,
      STRIPE_WEBHOOK_SECRET,
      owner.token,
      ownerLogin.token,
      admin.token,
      tenant.password,
    ];
    const text = JSON.stringify(entries);
    for (const secret of secrets) expect(text).not.toContain(secret);
    expect(text).not.toMatch(/postgres(ql)?:\/\/|sk_test_|whsec_|\$2[aby]\$|\$argon2|\$scrypt/);
    // The rows themselves, not only what the API shows of them.
    const [{ rows }] = await t.ctx.master.sequelize.query<{ rows: string }>(
      'SELECT json_agg(a)::text AS rows FROM audit_log a',
      { type: QueryTypes.SELECT },
    );
    for (const secret of secrets) expect(rows).not.toContain(secret);
    expect(rows).not.toMatch(/postgres(ql)?:\/\/|sk_test_|whsec_/);
  });
});
