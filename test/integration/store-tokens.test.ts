import request from 'supertest';
import { storeUserRoles } from '../../src/storefront/store-access';
import { registerUser, uniqueEmail } from '../helpers/app';
import { countRows, eventually, startInstance } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

const t = useSuite('store_tokens');
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let store: TestStore;
const PASSWORD = 'correct-horse-1';
const defaultTtl = storeUserRoles.ttlMs;

/** Requests to the store, optionally with a bearer token. */
function on(token?: string, client: { post: RecordingClient['post']; get: RecordingClient['get'] } = api) {
  const set = (r: request.Test) => (token ? r.set('Authorization', `Bearer ${token}`) : r).set('X-Store-Id', store.id);
  return { get: (path: string) => set(client.get(path)), post: (path: string) => set(client.post(path)) };
}

async function staffMember(role: 'admin' | 'staff' = 'staff') {
  const email = uniqueEmail(role);
  const created = await on(owner.token)
    .post('/api/store/staff')
    .send({ email, name: 'Sam Staff', password: PASSWORD, role })
    .expect(201);
  const login = await on().post('/api/store/auth/login').send({ email, password: PASSWORD }).expect(200);
  return { id: created.body.user.id as string, email, token: login.body.token as string };
}

let sku = 0;
const addProduct = (token: string) =>
  on(token)
    .post('/api/store/products')
    .send({ sku: `SKU-${++sku}`, name: 'Thing', priceCents: 100, stock: 1 });

beforeAll(async () => {
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
  // The suite makes more staff than the free plan's two per store.
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  store = await createActiveStore(t, { ownerId: owner.user.id });
  // The promise is "within 60 s"; the suite shortens how long an instance trusts a role it read.
  storeUserRoles.ttlMs = 200;
  t.defer('the role cache TTL', () => (storeUserRoles.ttlMs = defaultTtl));
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

describe('POST /api/store/auth/logout', () => {
  test('returns 204, and the store token is refused with 401 from then on; a new login works', async () => {
    const sam = await staffMember();
    await on(sam.token).get('/api/store/auth/me').expect(200);
    await addProduct(sam.token).expect(201);

    await on(sam.token).post('/api/store/auth/logout').expect(204);

    expectProblem(await on(sam.token).get('/api/store/auth/me'), 401, 'UNAUTHENTICATED');
    expectProblem(await addProduct(sam.token), 401, 'UNAUTHENTICATED');
    expectProblem(await on(sam.token).post('/api/store/auth/logout'), 401, 'UNAUTHENTICATED');
    const again = await on().post('/api/store/auth/login').send({ email: sam.email, password: PASSWORD }).expect(200);
    await on(again.body.token).get('/api/store/auth/me').expect(200);
  });

  test('the revocation reaches every instance, and is recorded without a platform account', async () => {
    const shopper = await on()
      .post('/api/store/auth/register')
      .send({ email: uniqueEmail('shopper'), password: PASSWORD, name: 'Shopper' })
      .expect(201);
    const token = shopper.body.token as string;
    const other = await startInstance(t);
    try {
      const there = (path: string) =>
        request(other.app).get(path).set('X-Store-Id', store.id).set('Authorization', `Bearer ${token}`);
      await there('/api/store/auth/me').expect(200);
      await on(token).post('/api/store/auth/logout').expect(204);
      await eventually(async () => expectProblem(await there('/api/store/auth/me'), 401, 'UNAUTHENTICATED'));
    } finally {
      await other.ctx.close();
    }
    const { jti } = t.ctx.tokens.verify(token);
    expect(await countRows(t, 'revoked_tokens', 'jti = :jti AND user_id IS NULL', { jti })).toBe(1);
  });

  test('needs a store token: none → 401, a platform token → 403 WRONG_TOKEN_TYPE (and it stays valid)', async () => {
    expectProblem(await on().post('/api/store/auth/logout'), 401, 'UNAUTHENTICATED');
    expectProblem(await on(owner.token).post('/api/store/auth/logout'), 403, 'WRONG_TOKEN_TYPE');
    await api.get('/api/auth/me').set('Authorization', `Bearer ${owner.token}`).expect(200);
  });

  test('is documented in the OpenAPI document', async () => {
    const doc = await api.get('/openapi.json').expect(200);
    expect(doc.body.paths['/api/store/auth/logout'].post.responses).toHaveProperty('204');
  });
});

describe("a store user's role change or removal reaches tokens already issued", () => {
  test('staff demoted to customer in the store database: the old token soon gets 403 on staff routes', async () => {
    const sam = await staffMember();
    await addProduct(sam.token).expect(201);
    await tenantQuery(store, `UPDATE users SET role = 'customer' WHERE id = $1`, [sam.id]);

    await eventually(async () => expectProblem(await addProduct(sam.token), 403, 'FORBIDDEN'), 5000);
    expect((await on(sam.token).get('/api/store/auth/me').expect(200)).body.user.role).toBe('customer');
    // As a customer, the same token sees only its own orders.
    await on(sam.token).get('/api/store/orders').expect(200);
  });

  test('a customer promoted to admin gets the admin routes with the token already issued', async () => {
    const shopper = await on()
      .post('/api/store/auth/register')
      .send({ email: uniqueEmail('shopper'), password: PASSWORD, name: 'Shopper' })
      .expect(201);
    expectProblem(await addProduct(shopper.body.token), 403, 'FORBIDDEN');
    await tenantQuery(store, `UPDATE users SET role = 'admin' WHERE id = $1`, [shopper.body.user.id]);
    await eventually(async () => addProduct(shopper.body.token).expect(201), 5000);
  });

  test('a user deleted from the store database: the old token soon gets 401, /auth/me included', async () => {
    const sam = await staffMember('admin');
    await addProduct(sam.token).expect(201);
    await tenantQuery(store, 'DELETE FROM users WHERE id = $1', [sam.id]);

    await eventually(async () => expectProblem(await addProduct(sam.token), 401, 'UNAUTHENTICATED'), 5000);
    expectProblem(await on(sam.token).get('/api/store/auth/me'), 401, 'UNAUTHENTICATED');
    expectProblem(await on(sam.token).get('/api/store/orders'), 401, 'UNAUTHENTICATED');
  });
});
