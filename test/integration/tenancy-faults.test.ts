import type { Server } from 'node:http';
import net from 'node:net';
import request from 'supertest';
import { secretContext } from '../../src/lib/crypto';
import { ident } from '../../src/db/tenant-server-admin';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { expectProblem } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, type TestStore } from '../helpers/tenants';

const FENCE_MS = 1500;
/** The contract: an unreachable tenant DB is a 503 within 2 s, never a hang. */
const ANSWER_WITHIN_MS = 2000;

const t = useSuite('faults', { TENANT_FENCE_MS: String(FENCE_MS) });
let server: Server;
let owner: Awaited<ReturnType<typeof registerUser>>;
let a: TestStore;
const A = 'a.faults.test';
const B = 'b.faults.test';
const C = 'c.faults.test';

beforeAll(async () => {
  server = t.listen();
  owner = await registerUser(t.app);
  [a] = await Promise.all([
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [A] }),
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [B] }),
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [C] }),
  ]);
  for (const host of [A, B, C]) {
    await request(server)
      .post('/api/store/products')
      .set('Host', host)
      .set('Authorization', `Bearer ${owner.token}`)
      .send({ sku: `${host}-1`, name: 'Thing', priceCents: 100 })
      .expect(201);
  }
});

async function timed(host: string, path = '/api/store/products') {
  const started = Date.now();
  const res = await request(server).get(path).set('Host', host);
  return { res, ms: Date.now() - started };
}

async function cutOff(store: TestStore) {
  await adminQuery(`REVOKE CONNECT ON DATABASE ${ident(store.database)} FROM ${ident(store.role)}`);
  await adminQuery(`REVOKE CONNECT ON DATABASE ${ident(store.database)} FROM PUBLIC`);
  await adminQuery(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${store.database}' AND pid <> pg_backend_pid()`,
  );
}

async function reconnect(store: TestStore) {
  await adminQuery(`GRANT CONNECT ON DATABASE ${ident(store.database)} TO ${ident(store.role)}`);
}

function expectUnavailable(res: request.Response, store: TestStore) {
  expectProblem(res, 503, 'TENANT_UNAVAILABLE');
  const retryAfter = Number(res.headers['retry-after']);
  expect(Number.isInteger(retryAfter)).toBe(true);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(Math.ceil(FENCE_MS / 1000));
  // Nothing about the database server leaks into the answer.
  for (const secret of [
    store.database,
    store.role,
    store.connection.password,
    'permission denied',
    '127.0.0.1',
    '5432',
  ])
    expect(res.text).not.toContain(secret);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait until the store's fence has run out, so the next request tries its database again. */
async function waitPastFence(storeId: string) {
  const fence = t.ctx.tenants.stats().fenced.find((f) => f.storeId === storeId);
  if (fence) await sleep(Math.max(0, Date.parse(fence.until) - Date.now()) + 100);
}

test('a store whose database refuses connections answers 503 TENANT_UNAVAILABLE with Retry-After within 2 s, while the others keep answering 200; it recovers by itself', async () => {
  // All three are warm: handles built and connections open.
  for (const host of [A, B, C]) expect((await timed(host)).res.status).toBe(200);

  await cutOff(a);

  // A fails fast; B and C answer at the same time.
  for (let round = 0; round < 3; round++) {
    const [ra1, rb, ra2, rc, ra3] = await Promise.all([
      timed(A),
      timed(B),
      timed(A, '/api/store/info'),
      timed(C),
      timed(A),
    ]);
    for (const r of [ra1, ra2, ra3]) {
      expectUnavailable(r.res, a);
      expect(r.ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    expect(rb.res.status).toBe(200);
    expect(rb.res.body.items.map((p: { sku: string }) => p.sku)).toEqual([`${B}-1`]);
    expect(rc.res.status).toBe(200);
    expect(rc.res.body.items.map((p: { sku: string }) => p.sku)).toEqual([`${C}-1`]);
  }
  expect(t.ctx.tenants.stats().fenced.map((f) => f.storeId)).toEqual([a.id]);

  // Writes to A fail the same way, and B takes writes meanwhile.
  const write = await request(server)
    .post('/api/store/products')
    .set('Host', A)
    .set('Authorization', `Bearer ${owner.token}`)
    .send({ sku: 'DURING', name: 'x', priceCents: 1 });
  expectUnavailable(write, a);
  await request(server)
    .post('/api/store/products')
    .set('Host', B)
    .set('Authorization', `Bearer ${owner.token}`)
    .send({ sku: 'DURING', name: 'x', priceCents: 1 })
    .expect(201);

  // Still unreachable after the fence ran out: the retry fails fast again (and fences again).
  await waitPastFence(a.id);
  const retry = await timed(A);
  expectUnavailable(retry.res, a);
  expect(retry.ms).toBeLessThan(ANSWER_WITHIN_MS);

  // The database comes back: once the fence has run out, A answers again without any restart.
  await reconnect(a);
  await waitPastFence(a.id);
  const back = await timed(A);
  expect(back.res.status).toBe(200);
  expect(back.res.body.items.map((p: { sku: string }) => p.sku)).toEqual([`${A}-1`]);
  await request(server)
    .post('/api/store/products')
    .set('Host', A)
    .set('Authorization', `Bearer ${owner.token}`)
    .send({ sku: 'AFTER', name: 'x', priceCents: 1 })
    .expect(201);
  expect(t.ctx.tenants.stats().fenced).toEqual([]);
});

test('many concurrent requests to an unreachable store all fail fast with 503 and do not hold connections others need', async () => {
  await cutOff(a);
  await waitPastFence(a.id);
  const started = Date.now();
  const [toA, toB] = await Promise.all([
    Promise.all(Array.from({ length: 20 }, () => timed(A))),
    Promise.all(Array.from({ length: 20 }, () => timed(B))),
  ]);
  for (const r of toA) {
    expectUnavailable(r.res, a);
    expect(r.ms).toBeLessThan(ANSWER_WITHIN_MS);
  }
  for (const r of toB) expect(r.res.status).toBe(200);
  expect(Date.now() - started).toBeLessThan(ANSWER_WITHIN_MS * 2);
  expect(t.ctx.tenants.stats().perStore.find((s) => s.storeId === a.id)).toBeUndefined();

  await reconnect(a);
  await waitPastFence(a.id);
  expect((await timed(A)).res.status).toBe(200);
});

test('a store whose database server does not answer at all (nothing listening) answers 503 within 2 s', async () => {
  const dead = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['dead.faults.test'] });
  const { StoreDatabase } = t.ctx.master.models;
  // Credentials now point at a port where nothing listens (as if the tenant server were down).
  await StoreDatabase.update(
    {
      credentials: t.ctx.encryptor.encryptJson(
        { ...dead.connection, port: 1 },
        secretContext.storeCredentials(dead.id),
      ),
    },
    { where: { storeId: dead.id } },
  );
  await t.ctx.tenants.invalidate(dead.id);
  for (let i = 0; i < 2; i++) {
    const [r, other] = await Promise.all([timed('dead.faults.test'), timed(C)]);
    expectUnavailable(r.res, dead);
    expect(r.ms).toBeLessThan(ANSWER_WITHIN_MS);
    expect(other.res.status).toBe(200);
  }
});

test('a store whose database server accepts the connection but never answers gets 503 within 2 s, not a hang', async () => {
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  try {
    const port = (silent.address() as net.AddressInfo).port;
    const mute = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['mute.faults.test'] });
    await t.ctx.master.models.StoreDatabase.update(
      {
        credentials: t.ctx.encryptor.encryptJson({ ...mute.connection, port }, secretContext.storeCredentials(mute.id)),
      },
      { where: { storeId: mute.id } },
    );
    await t.ctx.tenants.invalidate(mute.id);

    const [first, second, other] = await Promise.all([
      timed('mute.faults.test'),
      timed('mute.faults.test', '/api/store/info'),
      timed(B),
    ]);
    for (const r of [first, second]) {
      expectUnavailable(r.res, mute);
      expect(r.ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    expect(other.res.status).toBe(200);
    // Fenced now: the next answer does not even wait for the server.
    const fenced = await timed('mute.faults.test');
    expectUnavailable(fenced.res, mute);
    expect(fenced.ms).toBeLessThan(ANSWER_WITHIN_MS);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => silent.close(r));
  }
});
