import { randomUUID } from 'node:crypto';
import request from 'supertest';
import { registerUser, uniqueEmail } from '../helpers/app';
import { insertStore, startInstance } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, setStoreStatus, tenantQuery, type TestStore } from '../helpers/tenants';

const t = useSuite('isolation');
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let stranger: Awaited<ReturnType<typeof registerUser>>;

const PASSWORD = 'correct-horse-1';

interface Shop {
  key: 'A' | 'B' | 'C';
  host: string;
  store: TestStore;
  productId: string;
  orderId: string;
  customer: { token: string; id: string; email: string };
}
const shops = {} as Record<'A' | 'B' | 'C', Shop>;

interface Req {
  host?: string;
  token?: string;
  storeId?: string;
}
/** A request with any combination of Host, bearer token and X-Store-Id. Without `host`, supertest sends 127.0.0.1:<port>. */
function call(method: 'get' | 'post' | 'patch' | 'delete', path: string, r: Req = {}) {
  let req = api[method](path);
  if (r.host) req = req.set('Host', r.host);
  if (r.token) req = req.set('Authorization', `Bearer ${r.token}`);
  if (r.storeId) req = req.set('X-Store-Id', r.storeId);
  return req;
}

async function setUpShop(key: Shop['key']): Promise<Shop> {
  const host = `${key.toLowerCase()}.iso.test`;
  const store = await createActiveStore(t, { ownerId: owner.user.id, name: `Shop ${key}`, hostnames: [host] });
  const product = await call('post', '/api/store/products', { host, token: owner.token })
    .send({ sku: `${key}-SKU`, name: `Product of ${key}`, priceCents: 100, stock: 50 })
    .expect(201);
  // The same e-mail is a different customer in every store.
  const email = `shared-customer-${owner.user.id.slice(0, 8)}@example.test`;
  const reg = await call('post', '/api/store/auth/register', { host })
    .send({ email, password: PASSWORD, name: `Customer of ${key}` })
    .expect(201);
  const order = await call('post', '/api/store/orders', { host, token: reg.body.token })
    .send({ items: [{ productId: product.body.id, quantity: 1 }] })
    .expect(201);
  return {
    key,
    host,
    store,
    productId: product.body.id,
    orderId: order.body.id,
    customer: { token: reg.body.token, id: reg.body.user.id, email },
  };
}

beforeAll(async () => {
  api = recordingClient(t.app);
  [owner, stranger] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
  const [a, b, c] = await Promise.all([setUpShop('A'), setUpShop('B'), setUpShop('C')]);
  Object.assign(shops, { A: a, B: b, C: c });
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

describe('a token and an address naming different stores', () => {
  test("a store token of A sent to B's host returns 403 TENANT_MISMATCH, on public and private routes", async () => {
    const { A, B } = shops;
    for (const [method, path] of [
      ['get', '/api/store/info'],
      ['get', '/api/store/products'],
      ['get', '/api/store/auth/me'],
      ['get', '/api/store/orders'],
      ['get', `/api/store/orders/${B.orderId}`],
    ] as const) {
      expectProblem(await call(method, path, { host: B.host, token: A.customer.token }), 403, 'TENANT_MISMATCH');
    }
    const before = await tenantQuery(B.store, 'SELECT count(*)::int AS n FROM orders');
    expectProblem(
      await call('post', '/api/store/orders', { host: B.host, token: A.customer.token }).send({
        items: [{ productId: B.productId, quantity: 1 }],
      }),
      403,
      'TENANT_MISMATCH',
    );
    expect(await tenantQuery(B.store, 'SELECT count(*)::int AS n FROM orders')).toEqual(before);
  });

  test('X-Store-Id of B with a token of A returns 403 TENANT_MISMATCH', async () => {
    const { A, B } = shops;
    expectProblem(
      await call('get', '/api/store/auth/me', { storeId: B.store.id, token: A.customer.token }),
      403,
      'TENANT_MISMATCH',
    );
    expectProblem(
      await call('get', '/api/store/products', { storeId: B.store.id, token: A.customer.token }),
      403,
      'TENANT_MISMATCH',
    );
    expectProblem(
      await call('post', '/api/store/orders', { storeId: B.store.id, token: A.customer.token }).send({
        items: [{ productId: B.productId, quantity: 1 }],
      }),
      403,
      'TENANT_MISMATCH',
    );
  });

  test("an owner's platform token switched to store A cannot act on B by host or header (403 TENANT_MISMATCH)", async () => {
    const { A, B } = shops;
    const switched = await api
      .post('/api/auth/switch-store')
      .set('Authorization', `Bearer ${owner.token}`)
      .send({ storeId: A.store.id })
      .expect(200);
    const tokenA = switched.body.token as string;
    const body = { sku: 'SNEAKY', name: 'Sneaky', priceCents: 1 };
    expectProblem(
      await call('post', '/api/store/products', { host: B.host, token: tokenA }).send(body),
      403,
      'TENANT_MISMATCH',
    );
    expectProblem(
      await call('post', '/api/store/products', { storeId: B.store.id, token: tokenA }).send(body),
      403,
      'TENANT_MISMATCH',
    );
    expect(await tenantQuery(B.store, "SELECT count(*)::int AS n FROM products WHERE sku = 'SNEAKY'")).toEqual([
      { n: 0 },
    ]);
    // The same token on its own store (by host, or by its storeId alone) works.
    await call('get', '/api/store/customers', { host: A.host, token: tokenA }).expect(200);
    const info = await call('get', '/api/store/info', { token: tokenA }).expect(200);
    expect(info.body.id).toBe(A.store.id);
  });
});

describe("one store's rows through another store", () => {
  test("B's product id requested through A returns 404 and B's product stays unchanged", async () => {
    const { A, B } = shops;
    expectProblem(await call('get', `/api/store/products/${B.productId}`, { host: A.host }), 404, 'NOT_FOUND');
    expectProblem(
      await call('get', `/api/store/products/${B.productId}`, { host: A.host, token: owner.token }),
      404,
      'NOT_FOUND',
    );
    expectProblem(
      await call('patch', `/api/store/products/${B.productId}`, { host: A.host, token: owner.token }).send({
        name: 'Renamed via A',
        stock: 0,
      }),
      404,
      'NOT_FOUND',
    );
    expectProblem(
      await call('delete', `/api/store/products/${B.productId}`, { host: A.host, token: owner.token }),
      404,
      'NOT_FOUND',
    );
    expectProblem(
      await call('post', '/api/store/orders', { host: A.host, token: A.customer.token }).send({
        items: [{ productId: B.productId, quantity: 1 }],
      }),
      404,
      'NOT_FOUND',
    );
    const rows = await tenantQuery(
      B.store,
      'SELECT p.name, p.deleted_at, i.stock FROM products p JOIN inventory i ON i.product_id = p.id WHERE p.id = $1',
      [B.productId],
    );
    expect(rows).toEqual([{ name: 'Product of B', deleted_at: null, stock: 49 }]);
  });

  test("B's order id requested through A returns 404, for A's staff and for A's customer", async () => {
    const { A, B } = shops;
    expectProblem(
      await call('get', `/api/store/orders/${B.orderId}`, { host: A.host, token: owner.token }),
      404,
      'NOT_FOUND',
    );
    expectProblem(
      await call('get', `/api/store/orders/${B.orderId}`, { host: A.host, token: A.customer.token }),
      404,
      'NOT_FOUND',
    );
    // B's own staff does see it.
    await call('get', `/api/store/orders/${B.orderId}`, { host: B.host, token: owner.token }).expect(200);
  });

  test('the same e-mail is a separate customer in every store; a customer of A alone cannot log in on B', async () => {
    const { A, B } = shops;
    const onB = await call('post', '/api/store/auth/login', { host: B.host })
      .send({ email: A.customer.email, password: PASSWORD })
      .expect(200);
    expect(onB.body.user.id).toBe(B.customer.id);
    expect(onB.body.user.id).not.toBe(A.customer.id);
    expect(JSON.parse(Buffer.from(onB.body.token.split('.')[1], 'base64url').toString()).storeId).toBe(B.store.id);
    const c = uniqueEmail('only-a');
    await call('post', '/api/store/auth/register', { host: A.host })
      .send({ email: c, password: PASSWORD, name: 'Only A' })
      .expect(201);
    expectProblem(
      await call('post', '/api/store/auth/login', { host: B.host }).send({ email: c, password: PASSWORD }),
      401,
      'INVALID_CREDENTIALS',
    );
    await call('post', '/api/store/auth/login', { host: A.host }).send({ email: c, password: PASSWORD }).expect(200);
  });

  test("no store's answers ever contain another store's products, customers or orders", async () => {
    const all = Object.values(shops);
    for (const shop of all) {
      const others = all.filter((s) => s !== shop);
      const products = (
        await call('get', '/api/store/products?limit=100', { host: shop.host, token: owner.token }).expect(200)
      ).body.items as { id: string; sku: string }[];
      expect(products.map((p) => p.sku)).toEqual([`${shop.key}-SKU`]);
      const customers = (
        await call('get', '/api/store/customers?limit=100', { host: shop.host, token: owner.token }).expect(200)
      ).body.items as { id: string; name: string }[];
      expect(customers.map((c) => c.id)).toContain(shop.customer.id);
      const orders = (
        await call('get', '/api/store/orders?limit=100', { host: shop.host, token: owner.token }).expect(200)
      ).body.items as { id: string; customerId: string }[];
      expect(orders.map((o) => o.id)).toEqual([shop.orderId]);
      const info = (await call('get', '/api/store/info', { host: shop.host }).expect(200)).body;
      expect(info).toMatchObject({ id: shop.store.id, slug: shop.store.slug, name: `Shop ${shop.key}` });
      const text = JSON.stringify({ products, customers, orders, info });
      for (const other of others) {
        for (const id of [
          other.store.id,
          other.productId,
          other.orderId,
          other.customer.id,
          other.store.slug,
          `${other.key}-SKU`,
          `Customer of ${other.key}`,
        ]) {
          expect(text).not.toContain(id);
        }
      }
    }
  });
});

describe('which store a request goes to', () => {
  test('by Host alone (case, port and trailing dot do not matter)', async () => {
    const { A, B } = shops;
    for (const host of [A.host, A.host.toUpperCase(), `${A.host}:8443`, `${A.host}.`]) {
      expect((await call('get', '/api/store/info', { host }).expect(200)).body.id).toBe(A.store.id);
    }
    expect((await call('get', '/api/store/info', { host: B.host }).expect(200)).body.id).toBe(B.store.id);
  });

  test('by X-Store-Id alone when the host names no store', async () => {
    const { B, C } = shops;
    expect((await call('get', '/api/store/info', { storeId: B.store.id }).expect(200)).body.id).toBe(B.store.id);
    expect(
      (await call('get', '/api/store/products', { storeId: C.store.id }).expect(200)).body.items.map(
        (p: { sku: string }) => p.sku,
      ),
    ).toEqual(['C-SKU']);
  });

  test("by the token's storeId alone when neither host nor header names a store", async () => {
    const { C } = shops;
    expect((await call('get', '/api/store/info', { token: C.customer.token }).expect(200)).body.id).toBe(C.store.id);
    const me = await call('get', '/api/store/auth/me', { token: C.customer.token }).expect(200);
    expect(me.body.user).toMatchObject({ id: C.customer.id, name: 'Customer of C' });
    const orders = await call('get', '/api/store/orders', { token: C.customer.token }).expect(200);
    expect(orders.body.items.map((o: { id: string }) => o.id)).toEqual([C.orderId]);
  });

  test('a Host and an X-Store-Id naming different stores answer 403 TENANT_MISMATCH; matching ones, and a matching token and header, agree', async () => {
    const { A, B } = shops;
    expectProblem(await call('get', '/api/store/info', { host: A.host, storeId: B.store.id }), 403, 'TENANT_MISMATCH');
    expect((await call('get', '/api/store/info', { host: A.host, storeId: A.store.id }).expect(200)).body.id).toBe(
      A.store.id,
    );
    expect(
      (await call('get', '/api/store/auth/me', { storeId: B.store.id, token: B.customer.token }).expect(200)).body.user
        .id,
    ).toBe(B.customer.id);
  });

  test('no store by host, header or token returns 404 STORE_NOT_FOUND', async () => {
    expectProblem(await call('get', '/api/store/info'), 404, 'STORE_NOT_FOUND');
    expectProblem(await call('get', '/api/store/products', { host: 'nowhere.iso.test' }), 404, 'STORE_NOT_FOUND');
    expectProblem(await call('get', '/api/store/products', { storeId: randomUUID() }), 404, 'STORE_NOT_FOUND');
    // A platform token with no active store names none either.
    expectProblem(await call('get', '/api/store/products', { token: stranger.token }), 404, 'STORE_NOT_FOUND');
    expectProblem(
      await call('post', '/api/store/auth/register').send({ email: uniqueEmail(), password: PASSWORD, name: 'Lost' }),
      404,
      'STORE_NOT_FOUND',
    );
  });

  test('an unknown hostname is remembered: asking again does not query the master DB', async () => {
    const host = `unknown-${randomUUID().slice(0, 8)}.iso.test`;
    const before = t.ctx.tenants.stats().hostCache;
    expectProblem(await call('get', '/api/store/info', { host }), 404, 'STORE_NOT_FOUND');
    const afterFirst = t.ctx.tenants.stats().hostCache;
    expect(afterFirst.misses).toBe(before.misses + 1);
    for (let i = 0; i < 5; i++)
      expectProblem(await call('get', '/api/store/products', { host }), 404, 'STORE_NOT_FOUND');
    const afterMore = t.ctx.tenants.stats().hostCache;
    expect(afterMore.misses).toBe(afterFirst.misses);
    expect(afterMore.hits).toBeGreaterThanOrEqual(afterFirst.hits + 5);
  });

  // BUG (src/storefront/resolve-tenant.ts): an upper-case X-Store-Id passes z.uuid() and is used verbatim as the
  // store id, so the token minted for it carries the upper-case id and no longer matches the store's host.
  test("an X-Store-Id in capitals names the same store: the token it gives out works with the store's host", async () => {
    const { B } = shops;
    const reg = await call('post', '/api/store/auth/register', { storeId: B.store.id.toUpperCase() })
      .send({ email: uniqueEmail('caps'), password: PASSWORD, name: 'Caps' })
      .expect(201);
    expect((await call('get', '/api/store/auth/me', { host: B.host, token: reg.body.token })).status).toBe(200);
    expect(JSON.parse(Buffer.from(reg.body.token.split('.')[1], 'base64url').toString()).storeId).toBe(B.store.id);
  });

  test('X-Forwarded-Host is ignored unless the server is configured to trust a proxy', async () => {
    const { A, B } = shops;
    expectProblem(await call('get', '/api/store/info').set('X-Forwarded-Host', A.host), 404, 'STORE_NOT_FOUND');
    expect(
      (await call('get', '/api/store/info', { host: B.host }).set('X-Forwarded-Host', A.host).expect(200)).body.id,
    ).toBe(B.store.id);
    const proxied = await startInstance(t, { TRUST_PROXY: 'on' });
    try {
      const res = await request(proxied.app)
        .get('/api/store/info')
        .set('Host', 'lb.internal')
        .set('X-Forwarded-Host', A.host)
        .expect(200);
      expect(res.body.id).toBe(A.store.id);
    } finally {
      await proxied.ctx.close();
    }
  });

  test('a malformed X-Store-Id returns 400', async () => {
    for (const bad of ['not-a-uuid', '1234', `${shops.A.store.id}x`]) {
      const res = await call('get', '/api/store/info', { storeId: bad });
      expectProblem(res, 400, 'VALIDATION_FAILED');
    }
  });
});

describe('who may act on a store', () => {
  test('a platform token of a non-member is refused (403) on write and staff routes, but may read the public catalogue', async () => {
    const { A } = shops;
    expectProblem(
      await call('post', '/api/store/products', { host: A.host, token: stranger.token }).send({
        sku: 'STRANGER',
        name: 'x',
        priceCents: 1,
      }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await call('patch', `/api/store/products/${A.productId}`, { host: A.host, token: stranger.token }).send({
        name: 'Mine now',
      }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await call('delete', `/api/store/products/${A.productId}`, { host: A.host, token: stranger.token }),
      403,
      'FORBIDDEN',
    );
    expectProblem(await call('get', '/api/store/customers', { host: A.host, token: stranger.token }), 403, 'FORBIDDEN');
    expectProblem(
      await call('post', '/api/store/staff', { storeId: A.store.id, token: stranger.token }).send({
        email: uniqueEmail(),
        name: 'x',
        password: PASSWORD,
        role: 'admin',
      }),
      403,
      'FORBIDDEN',
    );
    expect(
      await tenantQuery(A.store, "SELECT p.name, p.deleted_at FROM products p WHERE p.id = $1 OR p.sku = 'STRANGER'", [
        A.productId,
      ]),
    ).toEqual([{ name: 'Product of A', deleted_at: null }]);
    await call('get', '/api/store/products', { host: A.host, token: stranger.token }).expect(200);
  });

  test('a platform user who is staff of the store acts as staff: may manage products, may not add staff', async () => {
    const { A } = shops;
    const member = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: A.store.id, userId: member.user.id, role: 'staff' });
    const created = await call('post', '/api/store/products', { host: A.host, token: member.token })
      .send({ sku: 'A-BY-STAFF', name: 'By staff', priceCents: 5 })
      .expect(201);
    await call('get', '/api/store/customers', { host: A.host, token: member.token }).expect(200);
    expectProblem(
      await call('post', '/api/store/staff', { host: A.host, token: member.token }).send({
        email: uniqueEmail(),
        name: 'x',
        password: PASSWORD,
        role: 'staff',
      }),
      403,
      'FORBIDDEN',
    );
    // Membership of A gives nothing on B.
    expectProblem(
      await call('post', '/api/store/products', { host: shops.B.host, token: member.token }).send({
        sku: 'B-BY-STAFF',
        name: 'x',
        priceCents: 5,
      }),
      403,
      'FORBIDDEN',
    );
    await call('delete', `/api/store/products/${created.body.id}`, { host: A.host, token: member.token }).expect(204);
  });

  test("a store's customer token is not accepted by platform routes (403 WRONG_TOKEN_TYPE)", async () => {
    expectProblem(
      await api.get('/api/auth/me').set('Authorization', `Bearer ${shops.A.customer.token}`),
      403,
      'WRONG_TOKEN_TYPE',
    );
  });
});

describe('stores that cannot be served', () => {
  let d: TestStore;
  const D = 'd.iso.test';
  beforeAll(async () => {
    d = await createActiveStore(t, { ownerId: owner.user.id, hostnames: [D] });
    await call('get', '/api/store/info', { host: D }).expect(200);
  });
  afterEach(async () => {
    await setStoreStatus(t, d.id, 'active');
  });

  test.each(['pending_database', 'provisioning', 'provisioning_failed'] as const)(
    'a store in status %s returns 409 STORE_NOT_READY',
    async (status) => {
      await setStoreStatus(t, d.id, status);
      expectProblem(await call('get', '/api/store/info', { host: D }), 409, 'STORE_NOT_READY');
      expectProblem(await call('get', '/api/store/products', { storeId: d.id }), 409, 'STORE_NOT_READY');
      expectProblem(
        await call('post', '/api/store/products', { host: D, token: owner.token }).send({
          sku: 'X',
          name: 'x',
          priceCents: 1,
        }),
        409,
        'STORE_NOT_READY',
      );
    },
  );

  test('a suspended store returns 423 STORE_SUSPENDED, and serves again once resumed', async () => {
    await setStoreStatus(t, d.id, 'suspended');
    expectProblem(await call('get', '/api/store/info', { host: D }), 423, 'STORE_SUSPENDED');
    expectProblem(
      await call('post', '/api/store/auth/register', { storeId: d.id }).send({
        email: uniqueEmail(),
        password: PASSWORD,
        name: 'x',
      }),
      423,
      'STORE_SUSPENDED',
    );
    expect(await tenantQuery(d, 'SELECT count(*)::int AS n FROM users')).toEqual([{ n: 0 }]);
    await setStoreStatus(t, d.id, 'active');
    expect((await call('get', '/api/store/info', { host: D }).expect(200)).body.id).toBe(d.id);
  });

  // BUG (src/storefront/resolve-tenant.ts): the handle cached under the upper-case id is not dropped by
  // invalidate(storeId), so a suspended store keeps serving through it.
  test('a suspended store is refused also when addressed by its id in capitals', async () => {
    const upper = d.id.toUpperCase();
    await call('get', '/api/store/info', { storeId: upper }).expect(200);
    await setStoreStatus(t, d.id, 'suspended');
    expectProblem(await call('get', '/api/store/info', { storeId: d.id }), 423, 'STORE_SUSPENDED');
    expectProblem(await call('get', '/api/store/info', { storeId: upper }), 423, 'STORE_SUSPENDED');
  });

  test('a deleted store returns 404 STORE_NOT_FOUND by host, header and token', async () => {
    const reg = await call('post', '/api/store/auth/register', { host: D })
      .send({ email: uniqueEmail(), password: PASSWORD, name: 'Early' })
      .expect(201);
    await setStoreStatus(t, d.id, 'deleted');
    expectProblem(await call('get', '/api/store/info', { host: D }), 404, 'STORE_NOT_FOUND');
    expectProblem(await call('get', '/api/store/products', { storeId: d.id }), 404, 'STORE_NOT_FOUND');
    expectProblem(await call('get', '/api/store/auth/me', { token: reg.body.token }), 404, 'STORE_NOT_FOUND');
  });

  test('a store registered without a database yet returns 409 STORE_NOT_READY', async () => {
    const pending = await insertStore(t, owner.user.id, { status: 'pending_database' });
    expectProblem(await call('get', '/api/store/info', { storeId: pending.id }), 409, 'STORE_NOT_READY');
    expectProblem(
      await call('post', '/api/store/products', { storeId: pending.id, token: owner.token }).send({
        sku: 'X',
        name: 'x',
        priceCents: 1,
      }),
      409,
      'STORE_NOT_READY',
    );
  });

  test('other stores keep answering while one is suspended', async () => {
    await setStoreStatus(t, d.id, 'suspended');
    expectProblem(await call('get', '/api/store/info', { host: D }), 423, 'STORE_SUSPENDED');
    for (const shop of Object.values(shops)) {
      expect((await request(t.app).get('/api/store/info').set('Host', shop.host).expect(200)).body.id).toBe(
        shop.store.id,
      );
    }
  });
});
