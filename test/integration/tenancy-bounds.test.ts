import type { Server } from 'node:http';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import { expectNoLeak } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, sampleTenantConnections, tenantQuery, type TestStore } from '../helpers/tenants';

const CONNECTIONS_MAX = 3;
const SEED_PRODUCTS = 3;

// One owner here: the whole cap is its share (owner shares are tested in tenancy-starvation). Waits for a
// slot get 5 s: 30 requests share 3 connections, and on a loaded machine 1.5 s is sometimes not enough —
// what is tested is the cap and that nothing fails, not how long a wait may last.
const t = useSuite('bounds', {
  TENANT_CACHE_MAX: '2',
  TENANT_CONNECTIONS_MAX: String(CONNECTIONS_MAX),
  TENANT_POOL_MAX: '2',
  TENANT_OWNER_SHARE: '100',
  TENANT_ACQUIRE_TIMEOUT_MS: '5000',
});
let server: Server;
let owner: Awaited<ReturnType<typeof registerUser>>;
const shops: { key: string; host: string; store: TestStore }[] = [];

beforeAll(async () => {
  server = t.listen();
  owner = await registerUser(t.app);
  const stores = await Promise.all(
    ['s0', 's1', 's2', 's3', 's4'].map(async (key) => ({
      key,
      host: `${key}.bounds.test`,
      store: await createActiveStore(t, { ownerId: owner.user.id, hostnames: [`${key}.bounds.test`] }),
    })),
  );
  shops.push(...stores);
  for (const shop of shops) {
    for (let i = 0; i < SEED_PRODUCTS; i++) {
      await request(server)
        .post('/api/store/products')
        .set('Host', shop.host)
        .set('Authorization', `Bearer ${owner.token}`)
        .send({ sku: `${shop.key}-seed-${i}`, name: `Seed ${i} of ${shop.key}`, priceCents: 100 + i })
        .expect(201);
    }
  }
});

/** Run `total` tasks with at most `width` in flight. */
async function withConcurrency<T>(total: number, width: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results: T[] = new Array(total);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < total) {
        const i = next++;
        results[i] = await task(i);
      }
    }),
  );
  return results;
}

test('300 mixed requests over five stores, 30 at a time, with room for 2 handles and 3 connections: every answer is right and none fails', async () => {
  const sampler = sampleTenantConnections(
    t,
    shops.map((s) => s.store.database),
  );
  const problems: string[] = [];
  const created = new Map<string, string[]>(shops.map((s) => [s.key, []]));

  await withConcurrency(300, 30, async (i) => {
    const shop = shops[i % shops.length];
    if (i % 3 === 2) {
      const sku = `${shop.key}-load-${i}`;
      const res = await request(server)
        .post('/api/store/products')
        .set('Host', shop.host)
        .set('Authorization', `Bearer ${owner.token}`)
        .send({ sku, name: `Load ${i}`, priceCents: i });
      if (res.status !== 201 || res.body.sku !== sku)
        problems.push(`create #${i} on ${shop.key}: ${res.status} ${res.text}`);
      else created.get(shop.key)!.push(res.body.id);
    } else {
      const res = await request(server).get('/api/store/products?limit=100').set('Host', shop.host);
      const items = (res.body?.items ?? []) as { sku: string }[];
      if (res.status !== 200) problems.push(`list #${i} on ${shop.key}: ${res.status} ${res.text}`);
      else if (items.length < SEED_PRODUCTS || items.some((p) => !p.sku.startsWith(`${shop.key}-`)))
        problems.push(`list #${i} on ${shop.key} shows ${items.map((p) => p.sku).join(',')}`);
      expectNoLeak(res);
    }
  });
  const samples = await sampler.stop();
  const stats = t.ctx.tenants.stats();

  expect(problems).toEqual([]);
  expect(samples.length).toBeGreaterThan(5);
  expect(Math.max(...samples)).toBeLessThanOrEqual(CONNECTIONS_MAX);
  expect(Math.max(...samples)).toBeGreaterThan(0);
  expect(stats.connections.peak).toBeLessThanOrEqual(CONNECTIONS_MAX);
  expect(stats.connections.waitTimeouts).toBe(0);
  expect(stats.handles).toBeLessThanOrEqual(2);
  expect(stats.evictions).toBeGreaterThan(0);

  // Each create landed in its own store's database, and only there.
  for (const shop of shops) {
    const rows = await tenantQuery<{ id: string; sku: string }>(
      shop.store,
      "SELECT id, sku FROM products WHERE sku LIKE '%-load-%'",
    );
    expect(rows.map((r) => r.id).sort()).toEqual([...created.get(shop.key)!].sort());
    expect(rows.every((r) => r.sku.startsWith(`${shop.key}-load-`))).toBe(true);
  }
});

test('50 concurrent first requests to a cold store share one handle build', async () => {
  const shop = shops[0];
  await t.ctx.tenants.invalidate(shop.store.id);
  expect(t.ctx.tenants.peek(shop.store.id)).toBeNull();
  const before = t.ctx.tenants.stats().builds;

  const answers = await Promise.all(
    Array.from({ length: 50 }, () => request(server).get('/api/store/products').set('Host', shop.host)),
  );
  expect(answers.map((r) => r.status)).toEqual(new Array(50).fill(200));
  for (const r of answers)
    expect(r.body.items.every((p: { sku: string }) => p.sku.startsWith(`${shop.key}-`))).toBe(true);
  const stats = t.ctx.tenants.stats();
  expect(stats.builds).toBe(before + 1);
  expect(stats.connections.peak).toBeLessThanOrEqual(CONNECTIONS_MAX);
});

test('after the load the stores still answer one by one, and connections stay within the cap', async () => {
  for (const shop of shops) {
    const res = await request(server).get('/api/store/info').set('Host', shop.host).expect(200);
    expect(res.body.id).toBe(shop.store.id);
  }
  expect(t.ctx.tenants.stats().connections.open).toBeLessThanOrEqual(CONNECTIONS_MAX);
});
