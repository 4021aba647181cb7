import type { Server } from 'node:http';
import net from 'node:net';
import pg from 'pg';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import { TEST_SERVER_URL } from '../helpers/db';
import { expectNoLeak, expectProblem } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import {
  createActiveStore,
  dropTestTenants,
  sampleTenantConnections,
  tenantQuery,
  type TestStore,
} from '../helpers/tenants';

const CONNECTIONS_MAX = 12;
const POOL_MAX = 3;
/** 25 % of 12. */
const OWNER_MAX = 3;
const LOCK_TIMEOUT_MS = 1000;
const STATEMENT_TIMEOUT_MS = 2000;
const ACQUIRE_TIMEOUT_MS = 1500;
const MAX_READ_BYTES = 64 * 1024;
/** A request to a locked store waits for a connection (at most the acquire timeout), then for the lock (at most the lock timeout). */
const LOCKED_ANSWER_WITHIN_MS = ACQUIRE_TIMEOUT_MS + LOCK_TIMEOUT_MS + 1500;

const t = useSuite('starve', {
  TENANT_CONNECTIONS_MAX: String(CONNECTIONS_MAX),
  TENANT_POOL_MAX: String(POOL_MAX),
  TENANT_OWNER_SHARE: '25',
  TENANT_ACQUIRE_TIMEOUT_MS: String(ACQUIRE_TIMEOUT_MS),
  TENANT_LOCK_TIMEOUT_MS: String(LOCK_TIMEOUT_MS),
  TENANT_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
  TENANT_MAX_READ_BYTES: String(MAX_READ_BYTES),
});
let server: Server;
type Owner = Awaited<ReturnType<typeof registerUser>>;
interface Shop {
  store: TestStore;
  owner: Owner;
}
let hostile: Owner;
const locked: Shop[] = [];
const others: Shop[] = [];

beforeAll(async () => {
  server = t.listen();
  hostile = await registerUser(t.app);
  const good = await Promise.all([registerUser(t.app), registerUser(t.app), registerUser(t.app)]);
  const make = async (owner: Owner): Promise<Shop> => ({
    owner,
    store: await createActiveStore(t, { ownerId: owner.user.id }),
  });
  locked.push(...(await Promise.all([hostile, hostile, hostile, hostile].map(make))));
  others.push(...(await Promise.all(good.flatMap((owner) => [owner, owner]).map(make))));
  for (const shop of [...locked, ...others]) {
    await request(server)
      .post('/api/store/products')
      .set('X-Store-Id', shop.store.id)
      .set('Authorization', `Bearer ${shop.owner.token}`)
      .send({ sku: `${shop.store.slug}-1`, name: 'Thing', priceCents: 100 })
      .expect(201);
  }
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** An answer, or status 0 if none came within `ms` (the old code let locked stores hang for as long as the lock was held). */
async function timed(req: request.Test, ms = 10_000) {
  const started = Date.now();
  try {
    const res = await req.timeout(ms);
    return { res, status: res.status, ms: Date.now() - started };
  } catch {
    return { res: undefined, status: 0, ms: Date.now() - started };
  }
}

const list = (shop: Shop) => timed(request(server).get('/api/store/products').set('X-Store-Id', shop.store.id));

/** Every store of the hostile owner has its products table locked by a session that keeps its transaction open. */
async function lockAll(shops: Shop[]): Promise<pg.Client[]> {
  return Promise.all(
    shops.map(async ({ store }) => {
      const client = await t.pgClient(store.connection);
      await client.query('BEGIN');
      await client.query('LOCK TABLE products IN ACCESS EXCLUSIVE MODE');
      return client;
    }),
  );
}

/** What Postgres sees the API hold to these databases, and what stats() says the owner holds, sampled together. */
function sampleOwner(databases: string[], ownerId: string) {
  const budget: number[] = [];
  const sampler = sampleTenantConnections(t, databases, () => {
    const usage = t.ctx.tenants.stats().connections.perOwner as { ownerId: string; open: number }[] | undefined;
    budget.push(usage?.find((o) => o.ownerId === ownerId)?.open ?? 0);
  });
  return {
    async stop() {
      return { server: await sampler.stop(), budget };
    },
  };
}

test("stores whose databases hold locks answer 503 within the lock timeout, hold no more than their owner's share, and cost the other owners' stores no error", async () => {
  // All warm first: handles built, connections open.
  for (const shop of [...locked, ...others]) expect((await list(shop)).status).toBe(200);

  const locks = await lockAll(locked);
  const sampler = sampleOwner(
    locked.map((s) => s.store.database),
    hostile.user.id,
  );
  const hostileAnswers: Awaited<ReturnType<typeof list>>[] = [];
  const otherProblems: string[] = [];
  try {
    for (let wave = 0; wave < 3; wave++) {
      const toLocked = Array.from({ length: 24 }, (_, i) => {
        const shop = locked[i % locked.length];
        // Some are writes: a transaction waiting for the lock fails the same way.
        if (i % 6 !== 5) return list(shop);
        return timed(
          request(server)
            .post('/api/store/products')
            .set('X-Store-Id', shop.store.id)
            .set('Authorization', `Bearer ${hostile.token}`)
            .send({ sku: `w${wave}-${i}`, name: 'Blocked', priceCents: 1 }),
        );
      });
      const toOthers = Array.from({ length: 24 }, async (_, i) => {
        const shop = others[i % others.length];
        if (i % 6 === 5) {
          const sku = `w${wave}-${i}`;
          const r = await timed(
            request(server)
              .post('/api/store/products')
              .set('X-Store-Id', shop.store.id)
              .set('Authorization', `Bearer ${shop.owner.token}`)
              .send({ sku, name: 'During', priceCents: 1 }),
          );
          if (r.status !== 201)
            otherProblems.push(`create on ${shop.store.slug}: ${r.status} ${r.res?.text ?? 'no answer'}`);
          return;
        }
        const r = await list(shop);
        if (r.status !== 200)
          otherProblems.push(`list on ${shop.store.slug}: ${r.status} ${r.res?.text ?? 'no answer'}`);
        else expect(r.res!.body.items.map((p: { sku: string }) => p.sku)).toContain(`${shop.store.slug}-1`);
      });
      const [answers] = await Promise.all([Promise.all(toLocked), Promise.all(toOthers)]);
      hostileAnswers.push(...answers);
    }
  } finally {
    await Promise.all(locks.map((c) => c.end()));
  }
  const seen = await sampler.stop();

  expect(otherProblems).toEqual([]);
  expect(hostileAnswers).toHaveLength(72);
  for (const a of hostileAnswers) {
    expect(a.status).toBe(503);
    expectProblem(a.res!, 503, 'TENANT_UNAVAILABLE');
    expect(Number(a.res!.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expectNoLeak(a.res!);
    expect(a.ms).toBeLessThan(LOCKED_ANSWER_WITHIN_MS);
  }
  expect(seen.server.length).toBeGreaterThan(10);
  expect(Math.max(...seen.server)).toBeLessThanOrEqual(OWNER_MAX);
  expect(Math.max(...seen.budget)).toBeLessThanOrEqual(OWNER_MAX);
  expect(Math.max(...seen.budget)).toBeGreaterThan(0);
  const stats = t.ctx.tenants.stats();
  expect(stats.connections.peak).toBeLessThanOrEqual(CONNECTIONS_MAX);
  expect(stats.connections.ownerMax).toBe(OWNER_MAX);

  // Slow is not down: nobody was fenced, and once the locks are gone the stores answer at once.
  expect(stats.fenced).toEqual([]);
  for (const shop of locked) expect((await list(shop)).status).toBe(200);
});

test("the connection stats (GET /api/admin/pools) show what each owner's stores hold and whose each store is", async () => {
  await Promise.all(others.map(list));
  const stats = t.ctx.tenants.stats();
  const owners = new Set(others.map((s) => s.owner.user.id));
  for (const usage of stats.connections.perOwner.filter((o) => owners.has(o.ownerId))) {
    expect(usage.open).toBeLessThanOrEqual(OWNER_MAX);
    expect(usage.peak).toBeLessThanOrEqual(OWNER_MAX);
  }
  const held = stats.perStore.filter((s) => others.some((o) => o.store.id === s.storeId));
  expect(held.length).toBeGreaterThan(0);
  for (const s of held) expect(s.ownerId).toBe(others.find((o) => o.store.id === s.storeId)!.owner.user.id);
});

test('every tenant session runs with the statement, lock and idle-transaction timeouts, and a statement past its timeout is a 503 that fences nothing', async () => {
  const shop = others[0];
  const handle = await t.ctx.tenants.forStore(shop.store.id);
  const [settings] = await handle.query<{ statement: string; lock: string; idle: string }>(
    "SELECT current_setting('statement_timeout') AS statement, current_setting('lock_timeout') AS lock, current_setting('idle_in_transaction_session_timeout') AS idle",
  );
  expect(settings).toEqual({ statement: '2s', lock: '1s', idle: '10s' });

  const started = Date.now();
  const err = await t.ctx.tenants.guard(handle, () => handle.query('SELECT pg_sleep(10)')).catch((e: unknown) => e);
  expect(err).toMatchObject({ status: 503, code: 'TENANT_UNAVAILABLE' });
  expect(Date.now() - started).toBeLessThan(STATEMENT_TIMEOUT_MS + 900);
  expect(t.ctx.tenants.stats().fenced).toEqual([]);
  expect((await list(shop)).status).toBe(200);
});

test('a store whose database returns more than TENANT_MAX_READ_BYTES for one request gets 503 for that request only; smaller reads still answer', async () => {
  const owner = await registerUser(t.app);
  const big = await createActiveStore(t, { ownerId: owner.user.id });
  // 30 products of ~9 kB: a page of 20 is ~180 kB on the wire, three of them ~27 kB.
  await tenantQuery(
    big,
    "INSERT INTO products (sku, name, description, price_cents) SELECT 'BIG-' || g, 'Big ' || g, repeat('x', 9000), 100 FROM generate_series(1, 30) g",
  );
  const get = (path: string) => timed(request(server).get(path).set('X-Store-Id', big.id));

  const tooMuch = await get('/api/store/products');
  expectProblem(tooMuch.res!, 503, 'TENANT_UNAVAILABLE');
  expect(tooMuch.res!.body.detail).toMatch(/more data than allowed/);
  expect(Number(tooMuch.res!.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  expectNoLeak(tooMuch.res!);

  const small = await get('/api/store/products?limit=2');
  expect(small.status).toBe(200);
  expect(small.res!.body.items).toHaveLength(2);
  expect(t.ctx.tenants.stats().fenced).toEqual([]);
  // The other stores never noticed.
  expect((await list(others[1])).status).toBe(200);
});

/**
 * Forwards to the test server; while stalled, answers from the server are held back — as if the server
 * ignored statement_timeout and never answered.
 */
async function startStallingProxy(target: { host: string; port: number }) {
  let stalled = false;
  const clients = new Set<net.Socket>();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    clients.add(client);
    client.on('close', () => {
      clients.delete(client);
      upstream.destroy();
    });
    for (const s of [client, upstream]) s.on('error', () => (s === client ? upstream : client).destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (!stalled) client.write(chunk);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  return {
    port: (proxy.address() as net.AddressInfo).port,
    clients,
    stall: (on: boolean) => void (stalled = on),
    async close() {
      for (const c of clients) c.destroy();
      await new Promise((r) => proxy.close(r));
    },
  };
}

test('a database that never answers a query gets 503 after the client-side timeout; its connection is closed, not reused, and the store is not fenced', async () => {
  const u = new URL(TEST_SERVER_URL);
  const proxy = await startStallingProxy({ host: u.hostname, port: Number(u.port || 5432) });
  t.defer('the stalling proxy', () => proxy.close());
  try {
    const via = new URL(TEST_SERVER_URL);
    via.port = String(proxy.port);
    const owner = await registerUser(t.app);
    const mute = await createActiveStore(t, { ownerId: owner.user.id, server: via.toString() });
    const get = () => timed(request(server).get('/api/store/products').set('X-Store-Id', mute.id));
    expect((await get()).status).toBe(200);
    const connectionsBefore = proxy.clients.size;
    expect(t.ctx.tenants.peek(mute.id)).toMatchObject({ open: 1, idle: 1 });

    proxy.stall(true);
    const stuck = await get();
    expectProblem(stuck.res!, 503, 'TENANT_UNAVAILABLE');
    expect(stuck.ms).toBeGreaterThanOrEqual(STATEMENT_TIMEOUT_MS);
    expect(stuck.ms).toBeLessThan(STATEMENT_TIMEOUT_MS + 2500);
    await sleep(100);
    // Closed, not put back: its socket is gone and the store holds no connection.
    expect(proxy.clients.size).toBe(connectionsBefore - 1);
    expect(t.ctx.tenants.peek(mute.id)).toMatchObject({ open: 0, idle: 0 });
    expect(t.ctx.tenants.stats().fenced).toEqual([]);

    proxy.stall(false);
    expect((await get()).status).toBe(200);
  } finally {
    // The store's database is reached through the proxy, also to drop it.
    proxy.stall(false);
    await dropTestTenants();
    await proxy.close();
  }
});
