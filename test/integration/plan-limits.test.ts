import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { sampleStorage } from '../../src/subscriptions/storage';
import { forgetStoreLimits } from '../../src/subscriptions/store-limits';
import { registerUser } from '../helpers/app';
import { countRows } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { auth, uniqueSlug } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

/**
 * Plan limits hold where things are created, under concurrency: products and staff in the store's own
 * database, stores and custom hostnames in the master. A store over its storage limit is read-only.
 */
const t = useSuite('plan_limits', {
  // 50 creations at once share one store's pool of 5 connections on a 2-core machine: give the queue time.
  TENANT_ACQUIRE_TIMEOUT_MS: '15000',
});
type User = Awaited<ReturnType<typeof registerUser>>;

const CONCURRENT = 50;
const LIMIT = 10;

async function subscribe(userId: string, planId: string) {
  await t.ctx.master.sequelize.query(
    `INSERT INTO subscriptions (user_id, plan_id, status) VALUES ($1::uuid, $2::text, 'active')`,
    { bind: [userId, planId] },
  );
  forgetStoreLimits();
}

let owner: User;
let store: TestStore;

beforeAll(async () => {
  await t.ctx.master.sequelize.query(
    `INSERT INTO plans (id, name, max_stores, max_products, max_staff, max_hostnames, max_storage_mb)
     VALUES ('test-ten', 'Test Ten', $1, $1, $1, $1, NULL), ('test-tiny', 'Test Tiny', 5, 100, 5, 5, 1)`,
    { bind: [LIMIT] },
  );
  owner = await registerUser(t.app);
  await subscribe(owner.user.id, 'test-ten');
  store = await createActiveStore(t, { ownerId: owner.user.id });
});

const statuses = (answers: request.Response[]) => answers.map((a) => a.status).sort();
const expectTenCreated = (answers: request.Response[]) => {
  expect(statuses(answers)).toEqual([...Array(LIMIT).fill(201), ...Array(CONCURRENT - LIMIT).fill(403)]);
  const refused = answers.find((a) => a.status === 403)!;
  expectProblem(refused, 403, 'PLAN_LIMIT_REACHED');
  expect(refused.body).toMatchObject({ limit: LIMIT, count: LIMIT });
};

test('50 concurrent product creations against a limit of 10 create exactly 10', async () => {
  const answers = await Promise.all(
    Array.from({ length: CONCURRENT }, (_, i) =>
      request(t.app)
        .post('/api/store/products')
        .set(auth(owner.token))
        .set('X-Store-Id', store.id)
        .send({ sku: `SKU-${i}`, name: `Product ${i}`, priceCents: 100 }),
    ),
  );
  expectTenCreated(answers);
  expect(answers.find((a) => a.status === 403)!.body.resource).toBe('products');
  const [{ n }] = await tenantQuery<{ n: number }>(store, 'SELECT count(*)::int AS n FROM products');
  expect(n).toBe(LIMIT);
});

test('a removed product frees its place, and restoring it is refused while the store is full', async () => {
  const [{ id }] = await tenantQuery<{ id: string }>(store, 'SELECT id FROM products ORDER BY created_at LIMIT 1');
  const store_ = () => ({ ...auth(owner.token), 'X-Store-Id': store.id });
  await request(t.app).delete(`/api/store/products/${id}`).set(store_()).expect(204);
  await request(t.app)
    .post('/api/store/products')
    .set(store_())
    .send({ sku: 'SKU-after', name: 'After', priceCents: 1 })
    .expect(201);
  expectProblem(
    await request(t.app).post(`/api/store/products/${id}/restore`).set(store_()),
    403,
    'PLAN_LIMIT_REACHED',
  );
});

test('50 concurrent staff creations against a limit of 10 create exactly 10 (the owner is not counted)', async () => {
  // The owner's own account in the store, as provisioning seeds it.
  await tenantQuery(
    store,
    `INSERT INTO users (email, password_hash, name, role, platform_user_id) VALUES ($1, 'x', 'Owner', 'admin', $2)`,
    [owner.user.email, owner.user.id],
  );
  const answers = await Promise.all(
    Array.from({ length: CONCURRENT }, (_, i) =>
      request(t.app)
        .post('/api/store/staff')
        .set(auth(owner.token))
        .set('X-Store-Id', store.id)
        .send({ email: `staff-${i}@example.test`, name: `Staff ${i}`, password: 'correct-horse-1', role: 'staff' }),
    ),
  );
  expectTenCreated(answers);
  expect(answers.find((a) => a.status === 403)!.body.resource).toBe('staff');
  const rows = await tenantQuery<{ role: string; n: number }>(
    store,
    `SELECT (platform_user_id IS NULL)::text AS role, count(*)::int AS n FROM users WHERE role IN ('admin', 'staff') GROUP BY 1 ORDER BY 1`,
  );
  // The owner's own account, and ten staff.
  expect(rows).toEqual([
    { role: 'false', n: 1 },
    { role: 'true', n: LIMIT },
  ]);
});

test('50 concurrent store creations against a limit of 10 leave the owner exactly 10 stores', async () => {
  const answers = await Promise.all(
    Array.from({ length: CONCURRENT }, () =>
      request(t.app).post('/api/stores').set(auth(owner.token)).send({ name: 'Shop', slug: uniqueSlug() }),
    ),
  );
  // One store was there already: nine more fit.
  const created = answers.filter((a) => a.status === 201).length;
  expect(created).toBe(LIMIT - 1);
  const refused = answers.filter((a) => a.status === 403);
  expect(refused).toHaveLength(CONCURRENT - created);
  expectProblem(refused[0], 403, 'PLAN_LIMIT_REACHED');
  expect(refused[0].body).toMatchObject({ resource: 'stores', limit: LIMIT, count: LIMIT });
  expect(await countRows(t, 'stores', 'owner_id = :id', { id: owner.user.id })).toBe(LIMIT);
});

test('50 concurrent hostname claims against a limit of 10 claim exactly 10', async () => {
  const answers = await Promise.all(
    Array.from({ length: CONCURRENT }, (_, i) =>
      request(t.app)
        .post(`/api/stores/${store.id}/hostnames`)
        .set(auth(owner.token))
        .send({ hostname: `shop-${i}.limits.test` }),
    ),
  );
  expectTenCreated(answers);
  expect(answers.find((a) => a.status === 403)!.body.resource).toBe('hostnames');
  expect(await countRows(t, 'store_hostnames', `store_id = :id AND kind = 'custom'`, { id: store.id })).toBe(LIMIT);
});

describe('storage', () => {
  let tiny: User;
  let small: TestStore;
  const headers = () => ({ ...auth(tiny.token), 'X-Store-Id': small.id });

  beforeAll(async () => {
    tiny = await registerUser(t.app);
    small = await createActiveStore(t, { ownerId: tiny.user.id });
    await subscribe(tiny.user.id, 'test-tiny');
  });

  test('a store whose sampled database is over its plan gets 403 on writes, and its reads keep working', async () => {
    // Before any sample, nothing is known to be over.
    await request(t.app)
      .post('/api/store/products')
      .set(headers())
      .send({ sku: 'before', name: 'Before', priceCents: 1 })
      .expect(201);

    const result = await sampleStorage(t.ctx);
    expect(result.failed).toBe(0);
    expect(result.sampled).toBeGreaterThanOrEqual(2);
    const [{ bytes }] = await t.ctx.master.sequelize.query<{ bytes: string }>(
      'SELECT storage_bytes::text AS bytes FROM stores WHERE id = $1::uuid',
      { bind: [small.id], type: QueryTypes.SELECT },
    );
    // An empty Postgres database is several megabytes: over a 1 MB plan.
    expect(Number(bytes)).toBeGreaterThan(1024 * 1024);

    const write = await request(t.app)
      .post('/api/store/products')
      .set(headers())
      .send({ sku: 'after', name: 'After', priceCents: 1 });
    expectProblem(write, 403, 'PLAN_LIMIT_REACHED');
    expect(write.body).toMatchObject({
      resource: 'storageMb',
      limit: 1,
      count: Math.ceil(Number(bytes) / 1024 / 1024),
    });
    expectProblem(
      await request(t.app).post('/api/store/staff').set(headers()).send({
        email: 'late@example.test',
        name: 'Late',
        password: 'correct-horse-1',
        role: 'staff',
      }),
      403,
      'PLAN_LIMIT_REACHED',
    );
    const [{ id }] = await tenantQuery<{ id: string }>(small, 'SELECT id FROM products LIMIT 1');
    expectProblem(await request(t.app).delete(`/api/store/products/${id}`).set(headers()), 403, 'PLAN_LIMIT_REACHED');

    const list = await request(t.app).get('/api/store/products').set('X-Store-Id', small.id).expect(200);
    expect(list.body.items).toHaveLength(1);
    await request(t.app).get(`/api/store/products/${id}`).set(headers()).expect(200);
    await request(t.app).get('/api/store/info').set('X-Store-Id', small.id).expect(200);

    // The other store (a plan without a storage limit) is not affected by the same sample.
    await request(t.app)
      .post('/api/store/products')
      .set({ ...auth(owner.token), 'X-Store-Id': store.id })
      .send({ sku: 'other-store', name: 'Other', priceCents: 1 })
      .expect((r) => expect(r.body.resource).not.toBe('storageMb'));
  });

  test('a larger plan lifts the refusal at once', async () => {
    await t.ctx.master.sequelize.query(`UPDATE subscriptions SET plan_id = 'test-ten' WHERE user_id = $1::uuid`, {
      bind: [tiny.user.id],
    });
    forgetStoreLimits();
    await request(t.app)
      .post('/api/store/products')
      .set(headers())
      .send({ sku: 'lifted', name: 'Lifted', priceCents: 1 })
      .expect(201);
  });
});
