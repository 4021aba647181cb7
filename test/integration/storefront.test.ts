import jwt from 'jsonwebtoken';
import request from 'supertest';
import { registerUser, uniqueEmail } from '../helpers/app';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

const t = useSuite('storeapi');
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let a: TestStore;
let b: TestStore;

const A = 'a.shop.test';
const B = 'b.shop.test';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const PASSWORD = 'correct-horse-1';

interface Product {
  id: string;
  sku: string;
  name: string;
  priceCents: number;
  stock: number;
  active: boolean;
}

/** Requests to one store by its hostname, optionally with a bearer token. */
function at(host: string, token?: string) {
  const auth = (r: request.Test) => (token ? r.set('Authorization', `Bearer ${token}`) : r).set('Host', host);
  return {
    get: (path: string) => auth(api.get(path)),
    post: (path: string) => auth(api.post(path)),
    patch: (path: string) => auth(api.patch(path)),
    delete: (path: string) => auth(api.delete(path)),
  };
}

async function registerCustomer(host: string, email = uniqueEmail('shopper')) {
  const res = await at(host)
    .post('/api/store/auth/register')
    .send({ email, password: PASSWORD, name: 'Shopper' })
    .expect(201);
  return { token: res.body.token as string, user: res.body.user as { id: string; email: string; role: string }, email };
}

async function createProduct(
  host: string,
  token: string,
  fields: Partial<Product> & { sku: string },
): Promise<Product> {
  const res = await at(host, token)
    .post('/api/store/products')
    .send({ name: `Product ${fields.sku}`, priceCents: 1000, stock: 10, ...fields });
  if (res.status !== 201) throw new Error(`creating ${fields.sku}: ${res.status} ${res.text}`);
  return res.body as Product;
}

async function stockOf(store: TestStore, productId: string): Promise<number> {
  const rows = await tenantQuery<{ stock: number }>(store, 'SELECT stock FROM inventory WHERE product_id = $1', [
    productId,
  ]);
  return rows[0].stock;
}

async function orderCount(store: TestStore): Promise<number> {
  const rows = await tenantQuery<{ n: number }>(store, 'SELECT count(*)::int AS n FROM orders');
  return rows[0].n;
}

beforeAll(async () => {
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
  // More staff than the free plan's two per store are made below.
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  [a, b] = await Promise.all([
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [A] }),
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [B] }),
  ]);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

test('owner creates a product on store A by host; it is listed on A only', async () => {
  const created = await request(t.app)
    .post('/api/store/products')
    .set('Host', A)
    .set('Authorization', `Bearer ${owner.token}`)
    .send({ sku: 'TSHIRT-1', name: 'T-shirt', priceCents: 1999, stock: 3 })
    .expect(201);
  expect(created.body).toMatchObject({ sku: 'TSHIRT-1', priceCents: 1999, stock: 3, currency: 'EUR', active: true });
  const listA = await request(t.app).get('/api/store/products').set('Host', A).expect(200);
  expect(listA.body.items.map((p: { sku: string }) => p.sku)).toEqual(['TSHIRT-1']);
  const listB = await request(t.app).get('/api/store/products').set('Host', B).expect(200);
  expect(listB.body.items).toEqual([]);
});

describe('store customers: register, login, me', () => {
  test('a shopper registers on a store by its host and gets a customer store token for that store', async () => {
    const email = uniqueEmail('Reg');
    const res = await at(A)
      .post('/api/store/auth/register')
      .send({ email, password: PASSWORD, name: 'Ann Shopper' })
      .expect(201);
    expect(res.body.user).toEqual({
      id: expect.stringMatching(UUID),
      email: email.toLowerCase(),
      name: 'Ann Shopper',
      role: 'customer',
      createdAt: expect.any(String),
    });
    expect(res.body.user).not.toHaveProperty('passwordHash');
    const claims = jwt.decode(res.body.token) as Record<string, unknown>;
    expect(claims).toMatchObject({ typ: 'store', storeId: a.id, sub: res.body.user.id, role: 'customer' });
    // It lives in A's database, not in B's.
    expect(await tenantQuery(a, 'SELECT role FROM users WHERE id = $1', [res.body.user.id])).toEqual([
      { role: 'customer' },
    ]);
    expect(await tenantQuery(a, 'SELECT 1 FROM customers WHERE user_id = $1', [res.body.user.id])).toHaveLength(1);
    expect(await tenantQuery(b, 'SELECT 1 FROM users WHERE email = $1', [email.toLowerCase()])).toHaveLength(0);
  });

  test('the same e-mail twice on one store returns 409 EMAIL_TAKEN (case-insensitive); another store accepts it', async () => {
    const email = uniqueEmail('twice');
    await at(A).post('/api/store/auth/register').send({ email, password: PASSWORD, name: 'One' }).expect(201);
    const again = await at(A)
      .post('/api/store/auth/register')
      .send({ email: email.toUpperCase(), password: PASSWORD, name: 'Two' });
    expectProblem(again, 409, 'EMAIL_TAKEN');
    expect(
      await tenantQuery(a, 'SELECT count(*)::int AS n FROM users WHERE email = $1', [email.toLowerCase()]),
    ).toEqual([{ n: 1 }]);
    await at(B).post('/api/store/auth/register').send({ email, password: PASSWORD, name: 'Three' }).expect(201);
  });

  test('login returns a store token; /auth/me returns the user', async () => {
    const { email, user } = await registerCustomer(A);
    const login = await at(A).post('/api/store/auth/login').send({ email, password: PASSWORD }).expect(200);
    expect(login.body.user).toMatchObject({ id: user.id, email, role: 'customer' });
    expect(jwt.decode(login.body.token)).toMatchObject({ typ: 'store', storeId: a.id, sub: user.id, role: 'customer' });
    const me = await at(A, login.body.token).get('/api/store/auth/me').expect(200);
    expect(me.body).toEqual({
      user: { id: user.id, email, name: 'Shopper', role: 'customer', createdAt: expect.any(String) },
    });
  });

  test('a wrong password and an unknown e-mail give the same 401 INVALID_CREDENTIALS answer', async () => {
    const { email } = await registerCustomer(A);
    const wrongPassword = await at(A).post('/api/store/auth/login').send({ email, password: 'not-the-password' });
    const unknownEmail = await at(A)
      .post('/api/store/auth/login')
      .send({ email: uniqueEmail('nobody'), password: PASSWORD });
    expectProblem(wrongPassword, 401, 'INVALID_CREDENTIALS');
    expectProblem(unknownEmail, 401, 'INVALID_CREDENTIALS');
    expect(wrongPassword.body).toEqual(unknownEmail.body);
  });

  test('/auth/me without a token is 401; with a platform token it is 403 WRONG_TOKEN_TYPE', async () => {
    expectProblem(await at(A).get('/api/store/auth/me'), 401, 'UNAUTHENTICATED');
    expectProblem(await at(A, owner.token).get('/api/store/auth/me'), 403, 'WRONG_TOKEN_TYPE');
    expectProblem(await at(A, 'not.a.token').get('/api/store/auth/me'), 401, 'UNAUTHENTICATED');
  });

  test('register with bad fields returns 400 with errors and creates nobody', async () => {
    const before = await tenantQuery<{ n: number }>(a, 'SELECT count(*)::int AS n FROM users');
    const res = await at(A)
      .post('/api/store/auth/register')
      .send({ email: 'not-an-email', password: 'short', name: 'X', role: 'admin' });
    expectProblem(res, 400, 'VALIDATION_FAILED');
    const paths = (res.body.errors as { path: string }[]).map((e) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['email', 'password']));
    expect(await tenantQuery(a, 'SELECT count(*)::int AS n FROM users')).toEqual(before);
  });
});

test("GET /api/store/info returns the store's public profile from its tenant DB, without auth", async () => {
  const res = await at(A).get('/api/store/info').expect(200);
  expect(res.body).toEqual({ id: a.id, name: expect.any(String), slug: a.slug, currency: 'EUR', timezone: 'UTC' });
  const resB = await at(B).get('/api/store/info').expect(200);
  expect(resB.body).toMatchObject({ id: b.id, slug: b.slug });
});

describe('products', () => {
  let p: TestStore;
  const P = 'p.shop.test';
  let staffToken: string;
  let adminToken: string;
  let customerToken: string;

  beforeAll(async () => {
    p = await createActiveStore(t, { ownerId: owner.user.id, hostnames: [P] });
    const staffEmail = uniqueEmail('staff');
    const adminEmail = uniqueEmail('admin');
    await at(P, owner.token)
      .post('/api/store/staff')
      .send({ email: staffEmail, name: 'Sam Staff', password: PASSWORD, role: 'staff' })
      .expect(201);
    await at(P, owner.token)
      .post('/api/store/staff')
      .send({ email: adminEmail, name: 'Ada Admin', password: PASSWORD, role: 'admin' })
      .expect(201);
    staffToken = (await at(P).post('/api/store/auth/login').send({ email: staffEmail, password: PASSWORD }).expect(200))
      .body.token;
    adminToken = (await at(P).post('/api/store/auth/login').send({ email: adminEmail, password: PASSWORD }).expect(200))
      .body.token;
    customerToken = (await registerCustomer(P)).token;
  });

  test('staff and admins log in with store tokens carrying their role', () => {
    expect(jwt.decode(staffToken)).toMatchObject({ typ: 'store', storeId: p.id, role: 'staff' });
    expect(jwt.decode(adminToken)).toMatchObject({ typ: 'store', storeId: p.id, role: 'admin' });
  });

  test("the owner's platform token, a store admin and a staff member can each create a product", async () => {
    for (const [who, token] of [
      ['owner', owner.token],
      ['admin', adminToken],
      ['staff', staffToken],
    ] as const) {
      const res = await at(P, token)
        .post('/api/store/products')
        .send({
          sku: `BY-${who}`,
          name: `Made by ${who}`,
          description: 'desc',
          priceCents: 500,
          currency: 'USD',
          stock: 2,
        });
      expect(res.status).toBe(201);
      expect(res.body).toEqual({
        id: expect.stringMatching(UUID),
        sku: `BY-${who}`,
        name: `Made by ${who}`,
        description: 'desc',
        priceCents: 500,
        currency: 'USD',
        stock: 2,
        active: true,
        createdAt: expect.any(String),
        updatedAt: expect.any(String),
      });
      const rows = await tenantQuery(
        p,
        'SELECT p.sku, p.price_cents, i.stock FROM products p JOIN inventory i ON i.product_id = p.id WHERE p.id = $1',
        [res.body.id],
      );
      expect(rows).toEqual([{ sku: `BY-${who}`, price_cents: 500, stock: 2 }]);
    }
  });

  test('a customer cannot create, change or delete products (403); without a token it is 401', async () => {
    const product = await createProduct(P, staffToken, { sku: 'CUST-TRY' });
    expectProblem(
      await at(P, customerToken).post('/api/store/products').send({ sku: 'CUST-1', name: 'Nope', priceCents: 1 }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await at(P, customerToken).patch(`/api/store/products/${product.id}`).send({ name: 'Hacked' }),
      403,
      'FORBIDDEN',
    );
    expectProblem(await at(P, customerToken).delete(`/api/store/products/${product.id}`), 403, 'FORBIDDEN');
    expectProblem(
      await at(P).post('/api/store/products').send({ sku: 'ANON-1', name: 'Nope', priceCents: 1 }),
      401,
      'UNAUTHENTICATED',
    );
    expect(await tenantQuery(p, "SELECT count(*)::int AS n FROM products WHERE sku IN ('CUST-1', 'ANON-1')")).toEqual([
      { n: 0 },
    ]);
    expect(await tenantQuery(p, 'SELECT name, deleted_at FROM products WHERE id = $1', [product.id])).toEqual([
      { name: product.name, deleted_at: null },
    ]);
  });

  test('the public list and GET /:id show active products only; staff may include inactive ones', async () => {
    const hidden = await createProduct(P, staffToken, { sku: 'HIDDEN-1', active: false });
    const shown = await createProduct(P, staffToken, { sku: 'SHOWN-1' });
    const skus = (res: request.Response) => (res.body.items as Product[]).map((x) => x.sku);

    const pub = await at(P).get('/api/store/products?limit=100').expect(200);
    expect(skus(pub)).toContain('SHOWN-1');
    expect(skus(pub)).not.toContain('HIDDEN-1');
    expect((pub.body.items as Product[]).every((x) => x.active)).toBe(true);
    expectProblem(await at(P).get(`/api/store/products/${hidden.id}`), 404, 'NOT_FOUND');
    await at(P).get(`/api/store/products/${shown.id}`).expect(200);

    // A customer asking for inactive products does not get them either.
    expect(
      skus(await at(P, customerToken).get('/api/store/products?limit=100&includeInactive=true').expect(200)),
    ).not.toContain('HIDDEN-1');
    expectProblem(await at(P, customerToken).get(`/api/store/products/${hidden.id}`), 404, 'NOT_FOUND');

    expect(
      skus(await at(P, staffToken).get('/api/store/products?limit=100&includeInactive=true').expect(200)),
    ).toContain('HIDDEN-1');
    expect(
      skus(await at(P, owner.token).get('/api/store/products?limit=100&includeInactive=true').expect(200)),
    ).toContain('HIDDEN-1');
    expect((await at(P, staffToken).get(`/api/store/products/${hidden.id}`).expect(200)).body).toMatchObject({
      sku: 'HIDDEN-1',
      active: false,
    });
  });

  test('pagination with limit and cursor walks every product once, newest first', async () => {
    await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['pages.shop.test'] });
    const made: string[] = [];
    for (let i = 0; i < 5; i++)
      made.push((await createProduct('pages.shop.test', owner.token, { sku: `PAGE-${i}` })).id);

    const seen: string[] = [];
    const pageSizes: number[] = [];
    let cursor: string | null = null;
    for (let guard = 0; guard < 10; guard++) {
      const url: string = `/api/store/products?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const res = await at('pages.shop.test').get(url).expect(200);
      expect(Object.keys(res.body).sort()).toEqual(['items', 'nextCursor']);
      pageSizes.push(res.body.items.length);
      seen.push(...(res.body.items as Product[]).map((x) => x.id));
      cursor = res.body.nextCursor;
      if (cursor === null) break;
    }
    expect(cursor).toBeNull();
    expect(pageSizes).toEqual([2, 2, 1]);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...made].reverse());
  });

  test('a bad cursor or limit returns 400', async () => {
    expectProblem(await at(P).get('/api/store/products?cursor=not-a-cursor'), 400, 'VALIDATION_FAILED');
    const forged = Buffer.from(JSON.stringify(['yesterday', 'x'])).toString('base64url');
    expectProblem(await at(P).get(`/api/store/products?cursor=${forged}`), 400, 'VALIDATION_FAILED');
    expectValidationErrors(await at(P).get('/api/store/products?limit=0'), ['limit']);
    expectValidationErrors(await at(P).get('/api/store/products?limit=101'), ['limit']);
  });

  test('PATCH changes fields and stock, in the answer and in the tenant DB', async () => {
    const product = await createProduct(P, adminToken, { sku: 'PATCH-1', priceCents: 100, stock: 1 });
    const res = await at(P, staffToken)
      .patch(`/api/store/products/${product.id}`)
      .send({ name: 'Renamed', priceCents: 250, stock: 42 })
      .expect(200);
    expect(res.body).toMatchObject({ id: product.id, sku: 'PATCH-1', name: 'Renamed', priceCents: 250, stock: 42 });
    expect((await at(P).get(`/api/store/products/${product.id}`).expect(200)).body).toMatchObject({
      name: 'Renamed',
      priceCents: 250,
      stock: 42,
    });
    expect(await tenantQuery(p, 'SELECT name, price_cents FROM products WHERE id = $1', [product.id])).toEqual([
      { name: 'Renamed', price_cents: 250 },
    ]);
    expect(await stockOf(p, product.id)).toBe(42);

    // Stock alone, then deactivation alone.
    await at(P, owner.token).patch(`/api/store/products/${product.id}`).send({ stock: 0 }).expect(200);
    expect(await stockOf(p, product.id)).toBe(0);
    expect(
      (await at(P, owner.token).patch(`/api/store/products/${product.id}`).send({ active: false }).expect(200)).body
        .active,
    ).toBe(false);
    expectProblem(await at(P).get(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');
  });

  test('PATCH with nothing, unknown fields or bad values returns 400 and changes nothing', async () => {
    const product = await createProduct(P, adminToken, { sku: 'PATCH-2', priceCents: 100 });
    expectProblem(
      await at(P, staffToken).patch(`/api/store/products/${product.id}`).send({}),
      400,
      'VALIDATION_FAILED',
    );
    expectProblem(
      await at(P, staffToken).patch(`/api/store/products/${product.id}`).send({ priceCents: 5, deletedAt: null }),
      400,
      'VALIDATION_FAILED',
    );
    expectValidationErrors(
      await at(P, staffToken).patch(`/api/store/products/${product.id}`).send({ priceCents: -1, stock: 1.5 }),
      ['priceCents', 'stock'],
    );
    expectValidationErrors(await at(P, staffToken).patch('/api/store/products/not-a-uuid').send({ name: 'x' }), ['id']);
    expect(await tenantQuery(p, 'SELECT price_cents FROM products WHERE id = $1', [product.id])).toEqual([
      { price_cents: 100 },
    ]);
  });

  test('PATCH or DELETE of an unknown product returns 404', async () => {
    const missing = '00000000-0000-4000-8000-000000000000';
    expectProblem(
      await at(P, staffToken).patch(`/api/store/products/${missing}`).send({ name: 'x' }),
      404,
      'NOT_FOUND',
    );
    expectProblem(await at(P, staffToken).delete(`/api/store/products/${missing}`), 404, 'NOT_FOUND');
    expectProblem(await at(P).get(`/api/store/products/${missing}`), 404, 'NOT_FOUND');
  });

  test('DELETE is soft: 204, then 404 through the API, the row kept with deleted_at set', async () => {
    const product = await createProduct(P, staffToken, { sku: 'DEL-1' });
    const res = await at(P, staffToken).delete(`/api/store/products/${product.id}`).expect(204);
    expect(res.text).toBe('');
    expectProblem(await at(P).get(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');
    expectProblem(await at(P, staffToken).get(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');
    const list = await at(P, staffToken).get('/api/store/products?limit=100&includeInactive=true').expect(200);
    expect((list.body.items as Product[]).map((x) => x.id)).not.toContain(product.id);
    const rows = await tenantQuery<{ deleted_at: Date | null; sku: string }>(
      p,
      'SELECT sku, deleted_at FROM products WHERE id = $1',
      [product.id],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0].deleted_at).toBeInstanceOf(Date);
    // Deleting again is a 404; the SKU is free for a new product.
    expectProblem(await at(P, staffToken).delete(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');
    expectProblem(
      await at(P, staffToken).patch(`/api/store/products/${product.id}`).send({ name: 'Back' }),
      404,
      'NOT_FOUND',
    );
    await createProduct(P, staffToken, { sku: 'DEL-1' });
  });

  test('a SKU that another product has returns 409 SKU_TAKEN on create and on change', async () => {
    await createProduct(P, staffToken, { sku: 'DUP-1' });
    const other = await createProduct(P, staffToken, { sku: 'DUP-2' });
    expectProblem(
      await at(P, staffToken).post('/api/store/products').send({ sku: 'DUP-1', name: 'Again', priceCents: 1 }),
      409,
      'SKU_TAKEN',
    );
    expectProblem(
      await at(P, staffToken).patch(`/api/store/products/${other.id}`).send({ sku: 'DUP-1' }),
      409,
      'SKU_TAKEN',
    );
    expect(await tenantQuery(p, "SELECT sku FROM products WHERE sku LIKE 'DUP-%' ORDER BY sku")).toEqual([
      { sku: 'DUP-1' },
      { sku: 'DUP-2' },
    ]);
  });

  test('invalid product bodies return 400 VALIDATION_FAILED naming each bad field', async () => {
    expectValidationErrors(
      await at(P, staffToken).post('/api/store/products').send({ sku: 'V-1', priceCents: 1.5, currency: 'euro' }),
      ['name', 'priceCents', 'currency'],
    );
    expectValidationErrors(
      await at(P, staffToken).post('/api/store/products').send({ sku: '', name: 'x', priceCents: -3, stock: -1 }),
      ['sku', 'priceCents', 'stock'],
    );
    const unknown = await at(P, staffToken)
      .post('/api/store/products')
      .send({ sku: 'V-2', name: 'x', priceCents: 1, id: '00000000-0000-4000-8000-000000000000' });
    expectProblem(unknown, 400, 'VALIDATION_FAILED');
    expect(unknown.body.errors.length).toBeGreaterThan(0);
    expect(await tenantQuery(p, "SELECT count(*)::int AS n FROM products WHERE sku IN ('V-1', 'V-2', '')")).toEqual([
      { n: 0 },
    ]);
  });

  test('GET /api/store/customers lists customers (not staff) to staff; customers get 403', async () => {
    const c = await registerCustomer(P);
    const res = await at(P, staffToken).get('/api/store/customers?limit=100').expect(200);
    const items = res.body.items as {
      id: string;
      email: string;
      role: string;
      phone: string | null;
      marketingOptIn: boolean;
    }[];
    expect(items.find((x) => x.id === c.user.id)).toEqual({
      id: c.user.id,
      email: c.email,
      name: 'Shopper',
      role: 'customer',
      createdAt: expect.any(String),
      phone: null,
      marketingOptIn: false,
    });
    expect(items.every((x) => x.role === 'customer')).toBe(true);
    expect(res.body.nextCursor).toBeNull();
    await at(P, owner.token).get('/api/store/customers').expect(200);
    expectProblem(await at(P, customerToken).get('/api/store/customers'), 403, 'FORBIDDEN');
    expectProblem(await at(P).get('/api/store/customers'), 401, 'UNAUTHENTICATED');
  });

  test('POST /api/store/staff is for admins only: staff and customers get 403', async () => {
    const body = () => ({ email: uniqueEmail('more'), name: 'More Staff', password: PASSWORD, role: 'staff' });
    const byAdmin = await at(P, adminToken).post('/api/store/staff').send(body()).expect(201);
    expect(byAdmin.body.user).toMatchObject({ role: 'staff' });
    const s1 = body();
    expectProblem(await at(P, staffToken).post('/api/store/staff').send(s1), 403, 'FORBIDDEN');
    expectProblem(await at(P, customerToken).post('/api/store/staff').send(body()), 403, 'FORBIDDEN');
    expect(await tenantQuery(p, 'SELECT 1 FROM users WHERE email = $1', [s1.email])).toHaveLength(0);
    expectValidationErrors(
      await at(P, adminToken)
        .post('/api/store/staff')
        .send({ ...body(), role: 'owner' }),
      ['role'],
    );
    const dup = body();
    await at(P, adminToken).post('/api/store/staff').send(dup).expect(201);
    expectProblem(await at(P, adminToken).post('/api/store/staff').send(dup), 409, 'EMAIL_TAKEN');
  });
});

describe('orders', () => {
  let o: TestStore;
  const O = 'orders.shop.test';
  let staffToken: string;
  let alice: Awaited<ReturnType<typeof registerCustomer>>;
  let bob: Awaited<ReturnType<typeof registerCustomer>>;
  let mug: Product;
  let pen: Product;

  beforeAll(async () => {
    o = await createActiveStore(t, { ownerId: owner.user.id, hostnames: [O] });
    const staffEmail = uniqueEmail('ostaff');
    await at(O, owner.token)
      .post('/api/store/staff')
      .send({ email: staffEmail, name: 'Staff', password: PASSWORD, role: 'staff' })
      .expect(201);
    staffToken = (await at(O).post('/api/store/auth/login').send({ email: staffEmail, password: PASSWORD }).expect(200))
      .body.token;
    [alice, bob] = await Promise.all([registerCustomer(O), registerCustomer(O)]);
    mug = await createProduct(O, owner.token, { sku: 'MUG', name: 'Mug', priceCents: 1250, stock: 10 });
    pen = await createProduct(O, owner.token, { sku: 'PEN', name: 'Pen', priceCents: 199, stock: 3 });
  });

  test('a customer orders: 201 with totals from the DB prices, stock decremented', async () => {
    const res = await at(O, alice.token)
      .post('/api/store/orders')
      .send({
        items: [
          { productId: mug.id, quantity: 2 },
          { productId: pen.id, quantity: 1 },
        ],
      });
    expect(res.status).toBe(201);
    expect(res.body).toMatchObject({
      id: expect.stringMatching(UUID),
      customerId: alice.user.id,
      status: 'placed',
      currency: 'EUR',
      subtotalCents: 2 * 1250 + 199,
      totalCents: 2 * 1250 + 199,
    });
    expect(res.body.items).toEqual(
      expect.arrayContaining([
        { productId: mug.id, sku: 'MUG', name: 'Mug', quantity: 2, unitPriceCents: 1250, lineTotalCents: 2500 },
        { productId: pen.id, sku: 'PEN', name: 'Pen', quantity: 1, unitPriceCents: 199, lineTotalCents: 199 },
      ]),
    );
    expect(res.body.items).toHaveLength(2);
    expect(await stockOf(o, mug.id)).toBe(8);
    expect(await stockOf(o, pen.id)).toBe(2);
    expect(
      await tenantQuery(o, 'SELECT customer_id, total_cents::int AS total FROM orders WHERE id = $1', [res.body.id]),
    ).toEqual([{ customer_id: alice.user.id, total: 2699 }]);
    expect((await at(O, alice.token).get(`/api/store/orders/${res.body.id}`).expect(200)).body).toEqual(res.body);
  });

  test('the client cannot send prices: an unknown field returns 400 and nothing is ordered', async () => {
    const before = await orderCount(o);
    const res = await at(O, alice.token)
      .post('/api/store/orders')
      .send({ items: [{ productId: mug.id, quantity: 1, unitPriceCents: 1 }] });
    expectProblem(res, 400, 'VALIDATION_FAILED');
    expectProblem(
      await at(O, alice.token)
        .post('/api/store/orders')
        .send({ items: [{ productId: mug.id, quantity: 1 }], totalCents: 1 }),
      400,
      'VALIDATION_FAILED',
    );
    expectValidationErrors(await at(O, alice.token).post('/api/store/orders').send({ items: [] }), ['items']);
    expectValidationErrors(
      await at(O, alice.token)
        .post('/api/store/orders')
        .send({ items: [{ productId: 'nope', quantity: 0 }] }),
      ['items.0.productId', 'items.0.quantity'],
    );
    expect(await orderCount(o)).toBe(before);
  });

  test('not enough stock returns 409 OUT_OF_STOCK and changes nothing', async () => {
    const mugStock = await stockOf(o, mug.id);
    const penStock = await stockOf(o, pen.id);
    const before = await orderCount(o);
    const itemsBefore = await tenantQuery(o, 'SELECT count(*)::int AS n FROM order_items');
    const res = await at(O, bob.token)
      .post('/api/store/orders')
      .send({
        items: [
          { productId: mug.id, quantity: 1 },
          { productId: pen.id, quantity: penStock + 1 },
        ],
      });
    expectProblem(res, 409, 'OUT_OF_STOCK');
    expect(await stockOf(o, mug.id)).toBe(mugStock);
    expect(await stockOf(o, pen.id)).toBe(penStock);
    expect(await orderCount(o)).toBe(before);
    expect(await tenantQuery(o, 'SELECT count(*)::int AS n FROM order_items')).toEqual(itemsBefore);
  });

  test('an unknown, deleted or inactive product returns 404 and changes nothing', async () => {
    const gone = await createProduct(O, staffToken, { sku: 'GONE', stock: 5 });
    await at(O, staffToken).delete(`/api/store/products/${gone.id}`).expect(204);
    const off = await createProduct(O, staffToken, { sku: 'OFF', stock: 5, active: false });
    const mugStock = await stockOf(o, mug.id);
    const before = await orderCount(o);
    for (const productId of ['00000000-0000-4000-8000-000000000000', gone.id, off.id]) {
      const res = await at(O, bob.token)
        .post('/api/store/orders')
        .send({
          items: [
            { productId: mug.id, quantity: 1 },
            { productId, quantity: 1 },
          ],
        });
      expectProblem(res, 404, 'NOT_FOUND');
    }
    expect(await stockOf(o, mug.id)).toBe(mugStock);
    expect(await orderCount(o)).toBe(before);
  });

  test('staff cannot place orders (403); anonymous callers get 401', async () => {
    expectProblem(
      await at(O, staffToken)
        .post('/api/store/orders')
        .send({ items: [{ productId: mug.id, quantity: 1 }] }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await at(O)
        .post('/api/store/orders')
        .send({ items: [{ productId: mug.id, quantity: 1 }] }),
      401,
      'UNAUTHENTICATED',
    );
    expectProblem(await at(O).get('/api/store/orders'), 401, 'UNAUTHENTICATED');
  });

  test("a customer sees only their own orders and gets 404 for another customer's order; staff see all", async () => {
    const bobOrder = (
      await at(O, bob.token)
        .post('/api/store/orders')
        .send({ items: [{ productId: mug.id, quantity: 1 }] })
        .expect(201)
    ).body;
    const aliceOrder = (
      await at(O, alice.token)
        .post('/api/store/orders')
        .send({ items: [{ productId: mug.id, quantity: 1 }] })
        .expect(201)
    ).body;

    const aliceList = (await at(O, alice.token).get('/api/store/orders?limit=100').expect(200)).body;
    expect(aliceList.items.length).toBeGreaterThanOrEqual(2);
    expect(aliceList.items.every((x: { customerId: string }) => x.customerId === alice.user.id)).toBe(true);
    expect(aliceList.items.map((x: { id: string }) => x.id)).toContain(aliceOrder.id);
    expect(aliceList.items.map((x: { id: string }) => x.id)).not.toContain(bobOrder.id);
    const bobList = (await at(O, bob.token).get('/api/store/orders?limit=100').expect(200)).body;
    expect(bobList.items.map((x: { id: string }) => x.id)).toEqual([bobOrder.id]);

    expectProblem(await at(O, alice.token).get(`/api/store/orders/${bobOrder.id}`), 404, 'NOT_FOUND');
    expectProblem(await at(O, bob.token).get(`/api/store/orders/${aliceOrder.id}`), 404, 'NOT_FOUND');
    await at(O, bob.token).get(`/api/store/orders/${bobOrder.id}`).expect(200);

    const all = (await at(O, staffToken).get('/api/store/orders?limit=100').expect(200)).body;
    const ids = all.items.map((x: { id: string }) => x.id);
    expect(ids).toEqual(expect.arrayContaining([aliceOrder.id, bobOrder.id]));
    expect(ids).toHaveLength(await orderCount(o));
    await at(O, staffToken).get(`/api/store/orders/${bobOrder.id}`).expect(200);
    await at(O, owner.token).get(`/api/store/orders/${aliceOrder.id}`).expect(200);
  });

  test('orders page with limit and cursor', async () => {
    const total = await orderCount(o);
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let guard = 0; guard < 20; guard++) {
      const url: string = `/api/store/orders?limit=1${cursor ? `&cursor=${cursor}` : ''}`;
      const res = await at(O, staffToken).get(url).expect(200);
      seen.push(...res.body.items.map((x: { id: string }) => x.id));
      cursor = res.body.nextCursor;
      if (!cursor) break;
    }
    expect(seen).toHaveLength(total);
    expect(new Set(seen).size).toBe(total);
  });

  test('20 customers ordering the last 5 items at once: exactly 5 get 201, 15 get 409, stock ends at 0', async () => {
    const last = await createProduct(O, owner.token, { sku: 'LAST-5', priceCents: 700, stock: 5 });
    const customers = await Promise.all(Array.from({ length: 20 }, () => registerCustomer(O)));
    const before = await orderCount(o);
    const answers = await Promise.all(
      customers.map((c) =>
        at(O, c.token)
          .post('/api/store/orders')
          .send({ items: [{ productId: last.id, quantity: 1 }] }),
      ),
    );
    const statuses = answers.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(5);
    expect(statuses.filter((s) => s === 409)).toHaveLength(15);
    for (const r of answers.filter((x) => x.status === 409)) expectProblem(r, 409, 'OUT_OF_STOCK');
    expect(await stockOf(o, last.id)).toBe(0);
    expect(await orderCount(o)).toBe(before + 5);
    expect(
      await tenantQuery(
        o,
        'SELECT count(*)::int AS n, sum(quantity)::int AS q FROM order_items WHERE product_id = $1',
        [last.id],
      ),
    ).toEqual([{ n: 5, q: 5 }]);
    expect((await at(O).get(`/api/store/products/${last.id}`).expect(200)).body.stock).toBe(0);
  });

  test('one customer sending 20 orders at once for a product with stock 5: exactly 5 orders', async () => {
    const last = await createProduct(O, owner.token, { sku: 'LAST-5B', priceCents: 300, stock: 5 });
    const before = await orderCount(o);
    const answers = await Promise.all(
      Array.from({ length: 20 }, () =>
        at(O, bob.token)
          .post('/api/store/orders')
          .send({ items: [{ productId: last.id, quantity: 1 }] }),
      ),
    );
    expect(answers.filter((r) => r.status === 201)).toHaveLength(5);
    expect(answers.filter((r) => r.status === 409 && r.body.code === 'OUT_OF_STOCK')).toHaveLength(15);
    expect(await stockOf(o, last.id)).toBe(0);
    expect(await orderCount(o)).toBe(before + 5);
  });
});
