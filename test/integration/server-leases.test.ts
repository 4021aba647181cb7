import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import {
  readServerSettings,
  serverBudget,
  ServerLeases,
  type LeaseOptions,
  type LeaseUsage,
  type ServerLease,
} from '../../src/db/server-leases';
import { withClient } from '../../src/db/pg-client';
import { TEST_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { useResources } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';

/**
 * Leases of one server's connection budget shared by several processes through Redis: here several lease
 * holders in one process, each with an instance id of its own, against the real Redis under a unique prefix.
 */
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const r = useResources();
const prefix = `test:${randomBytes(4).toString('hex')}`;
const SERVER = '10.0.0.1:5432';

/** A local budget as the lease sees it: set `open` and `waiting` by hand. */
class Usage implements LeaseUsage {
  open = 0;
  waiting = 0;
  owners = new Map<string, number>();
  allowances: number[] = [];
  perOwner() {
    return this.owners.entries();
  }
}

let seq = 0;
/** A process's leases (heartbeat off unless asked: each test drives the syncs itself). */
async function fleetMember(options: Partial<LeaseOptions> = {}, url = REDIS_URL): Promise<ServerLeases> {
  const id = `instance-${++seq}`;
  return r.open(
    `the leases of ${id}`,
    async () => new ServerLeases(url, { prefix, instanceId: id, heartbeatMs: 3_600_000, ...options }),
    (l) => l.close(),
  );
}

function leaseOf(
  leases: ServerLeases,
  budget: number,
  server = SERVER,
  localMax = 100,
): { lease: ServerLease; usage: Usage } {
  const usage = new Usage();
  const lease = leases.lease(server, { budget: async () => budget, localMax });
  lease.attach(usage, (n) => usage.allowances.push(n));
  return { lease, usage };
}

const redis = new Redis(REDIS_URL, { lazyConnect: true });
beforeAll(() => redis.connect());
r.defer('the test Redis client', async () => {
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
  await redis.quit();
});

async function leasedInRedis(server = SERVER): Promise<Record<string, number>> {
  const all = await redis.hgetall(`${prefix}:conn:{${server}}:leases`);
  return Object.fromEntries(Object.entries(all).map(([k, v]) => [k, Number(v)]));
}
const sum = (o: Record<string, number>) => Object.values(o).reduce((a, b) => a + b, 0);

test('the budget of a server is its slots minus the reserved ones and the headroom', () => {
  expect(serverBudget({ maxConnections: 100, superuserReserved: 3, reserved: 0 }, 15)).toBe(82);
  expect(serverBudget({ maxConnections: 100, superuserReserved: 3, reserved: 5 }, 15)).toBe(77);
  // Never 0: a tiny server still serves one connection at a time.
  expect(serverBudget({ maxConnections: 10, superuserReserved: 3, reserved: 0 }, 20)).toBe(1);
});

test("a server's settings are read as they are: max_connections and the reserved slots", async () => {
  await withClient(TEST_SERVER_URL, async (client) => {
    const settings = await readServerSettings(client);
    const show = async (name: string) => Number((await client.query(`SHOW ${name}`)).rows[0][name]);
    expect(settings.maxConnections).toBe(await show('max_connections'));
    expect(settings.superuserReserved).toBe(await show('superuser_reserved_connections'));
    const v16 = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num) >= 160000;
    expect(settings.reserved).toBe(v16 ? await show('reserved_connections') : 0);
  });
});

test('processes asking at once never lease more than the budget together, and each gets a part', async () => {
  const server = 'concurrent:5432';
  const members = await Promise.all([fleetMember(), fleetMember(), fleetMember()]);
  const holders = members.map((m) => leaseOf(m, 10, server));
  for (const h of holders) h.usage.waiting = 8;
  // Many rounds of concurrent syncs, as waiting requests and heartbeats would cause.
  for (let round = 0; round < 10; round++) {
    await Promise.all(holders.flatMap((h) => [h.lease.sync(), h.lease.sync(), h.lease.sync()]));
    const leased = await leasedInRedis(server);
    expect(sum(leased)).toBeLessThanOrEqual(10);
    expect(holders.reduce((n, h) => n + h.lease.leased, 0)).toBeLessThanOrEqual(10);
    // What a process may open never exceeds what it holds.
    for (const h of holders) expect(h.lease.allowance).toBeLessThanOrEqual(h.lease.leased);
  }
  // Everyone wants 8 of 10: each ends up with a part (a third, rounded down), none is left out.
  for (const h of holders) {
    h.usage.open = h.lease.allowance;
    h.usage.waiting = 8 - h.usage.open;
  }
  for (let round = 0; round < 5; round++) await Promise.all(holders.map((h) => h.lease.sync()));
  for (const h of holders) expect(h.lease.allowance).toBeGreaterThanOrEqual(3);
  expect(sum(await leasedInRedis(server))).toBeLessThanOrEqual(10);
});

test('leases move in blocks, and what is not wanted any more is given back after a while', async () => {
  const server = 'blocks:5432';
  const a = leaseOf(await fleetMember({ blockSize: 4, returnAfterMs: 300 }), 50, server);
  a.usage.waiting = 1;
  await a.lease.sync();
  expect(a.lease.leased).toBe(4);
  a.usage.open = 4;
  a.usage.waiting = 1;
  await a.lease.sync();
  expect(a.lease.leased).toBe(8);
  // Idle now: the lease stays while the last while's peak says 5, then goes back.
  a.usage.open = 0;
  a.usage.waiting = 0;
  await a.lease.sync();
  expect(a.lease.leased).toBe(8);
  await eventually(async () => {
    await a.lease.sync();
    expect(a.lease.leased).toBe(0);
  }, 5000);
  expect(await leasedInRedis(server)).toEqual({});
});

test('a process holding the whole budget gives back to one that is short: weighted by what each wants', async () => {
  const server = 'rebalance:5432';
  const a = leaseOf(await fleetMember(), 12, server);
  const b = leaseOf(await fleetMember(), 12, server);
  a.usage.waiting = 12;
  await a.lease.sync();
  expect(a.lease.leased).toBe(12);
  a.usage.open = 12;
  a.usage.waiting = 0;
  // B wants 12 too: nothing free yet.
  b.usage.waiting = 12;
  await b.lease.sync();
  expect(b.lease.leased).toBe(0);
  // A's next heartbeat: its part is 12 × 12/24 = 6; its 12 open connections stay leased until they close.
  await a.lease.sync();
  expect(a.lease.allowance).toBe(6);
  expect(a.lease.leased).toBe(12);
  // A's budget closed 6 (idle ones, or busy ones as their queries end): the lease follows, B gets them.
  a.usage.open = 6;
  await a.lease.sync();
  expect(a.lease.leased).toBe(6);
  await b.lease.sync();
  expect(b.lease.leased).toBe(6);
  expect(sum(await leasedInRedis(server))).toBe(12);
});

test('the open connections of each owner are seen by the other processes', async () => {
  const server = 'owners:5432';
  const a = leaseOf(await fleetMember(), 20, server);
  const b = leaseOf(await fleetMember(), 20, server);
  a.usage.owners.set('owner-1', 3).set('owner-2', 1);
  a.usage.open = 4;
  b.usage.owners.set('owner-1', 2);
  b.usage.open = 2;
  await a.lease.sync();
  await b.lease.sync();
  await a.lease.sync();
  expect(Object.fromEntries(b.lease.othersPerOwner)).toEqual({ 'owner-1': 3, 'owner-2': 1 });
  expect(Object.fromEntries(a.lease.othersPerOwner)).toEqual({ 'owner-1': 2 });
});

test('the leases of a process that stopped heart-beating go to the others within its TTL', async () => {
  const server = 'crash:5432';
  // A renews only when told (its heartbeat is off), with a TTL of 1.5 s: then it goes silent, as a killed process would.
  const a = leaseOf(await fleetMember({ ttlMs: 1500 }), 10, server);
  const bMember = await fleetMember({ heartbeatMs: 200 });
  const b = leaseOf(bMember, 10, server);
  a.usage.waiting = 10;
  await a.lease.sync();
  a.usage.open = 10;
  a.usage.waiting = 0;
  expect(a.lease.leased).toBe(10);
  b.usage.waiting = 10;
  await b.lease.sync();
  expect(b.lease.leased).toBe(0);
  a.lease.stop();
  // B's heartbeats reap A once its TTL is over, and B borrows what A held.
  await eventually(async () => {
    expect(b.lease.leased).toBe(10);
  }, 6000);
  expect(await leasedInRedis(server)).toEqual({ [bMember.instanceId]: 10 });
});

test('Redis back empty: the first process to ask gets no more than it held until the others have registered their open connections', async () => {
  const server = 'restart:5432';
  const keys = ['leases', 'alive', 'demand', 'owners', 'info'].map((k) => `${prefix}:conn:{${server}}:${k}`);
  const a = leaseOf(await fleetMember({ ttlMs: 1000 }), 15, server);
  const b = leaseOf(await fleetMember({ ttlMs: 1000 }), 15, server);
  b.usage.waiting = 10;
  await b.lease.sync();
  a.usage.waiting = 3;
  await a.lease.sync();
  expect([a.lease.leased, b.lease.leased]).toEqual([3, 12]);
  a.usage.open = 2;
  a.usage.waiting = 0;
  b.usage.open = 10;
  b.usage.waiting = 0;

  // Redis restarts with nothing in it; A has many requests waiting and asks first, B asks next.
  await redis.del(...keys);
  a.usage.waiting = 13;
  await a.lease.sync();
  await b.lease.sync();
  // B's 10 sessions are real: A may not have taken what B still holds.
  expect(sum(await leasedInRedis(server))).toBeLessThanOrEqual(15);
  expect(a.lease.allowance + b.usage.open).toBeLessThanOrEqual(15);
  expect(b.lease.leased).toBeGreaterThanOrEqual(b.usage.open);

  // Once both are known, A borrows again as usual (B gives back what it does not use).
  await eventually(async () => {
    await b.lease.sync();
    await a.lease.sync();
    expect(a.lease.allowance).toBeGreaterThan(3);
  }, 5000);
  expect(sum(await leasedInRedis(server))).toBeLessThanOrEqual(15);
});

test('without Redis a process uses the last known budget divided by the last known number of processes, and leases again when it is back', async () => {
  const server = 'redis-down:5432';
  const port = await freePort();
  const proxy = await r.proxy(port, { host: '127.0.0.1', port: Number(new URL(REDIS_URL).port || 6379) });
  const a = leaseOf(await fleetMember({ callTimeoutMs: 200, ttlMs: 1000 }, `redis://127.0.0.1:${port}`), 30, server);
  const b = leaseOf(await fleetMember(), 30, server);
  const c = leaseOf(await fleetMember(), 30, server);
  await eventually(async () => {
    a.usage.waiting = 4;
    await a.lease.sync();
    expect(a.lease.mode).toBe('leased');
  }, 5000);
  b.usage.waiting = 4;
  c.usage.waiting = 4;
  await b.lease.sync();
  await c.lease.sync();
  await a.lease.sync();
  expect(a.lease.instances).toBe(3);
  a.usage.open = a.lease.allowance;
  a.usage.waiting = 0;

  const held = a.lease.allowance;
  await proxy.close();
  await a.lease.sync();
  expect(a.lease.mode).toBe('static');
  // At once no more than it held: the others may not have shrunk to their shares yet (they have not noticed,
  // or their connections are busy), and growing now could put the shares together over the budget.
  expect(a.lease.allowance).toBe(Math.min(10, held));
  // 30 / 3 processes once a lease's TTL has gone by.
  await eventually(async () => {
    await a.lease.sync();
    expect(a.lease.allowance).toBe(10);
  }, 5000);

  const back = await r.proxy(port, { host: '127.0.0.1', port: Number(new URL(REDIS_URL).port || 6379) });
  await eventually(async () => {
    await a.lease.sync();
    expect(a.lease.mode).toBe('leased');
  }, 8000);
  expect(a.lease.leased).toBeGreaterThanOrEqual(a.usage.open);
  await back.close();
});

test('requests that keep waiting make a call to Redis every retryMs at most, not one each', async () => {
  const server = 'pressure:5432';
  const a = leaseOf(await fleetMember({ retryMs: 100 }), 50, server);
  a.usage.waiting = 100;
  // Requests queue one after another for 50 ms, each asking for more.
  const until = Date.now() + 50;
  while (Date.now() < until) {
    a.lease.wantMore();
    await new Promise((r) => setTimeout(r, 1));
  }
  // One call at once, then at most one per 100 ms (a busy machine may stretch those 50 ms).
  expect(a.lease.counters.syncs).toBeGreaterThanOrEqual(1);
  expect(a.lease.counters.syncs).toBeLessThanOrEqual(3);
  await eventually(async () => expect(a.lease.leased).toBe(50), 3000);
});

test('the heartbeat renews the leases in use and leaves a server this process neither holds nor uses alone', async () => {
  const member = await fleetMember({ heartbeatMs: 50 });
  const busy = leaseOf(member, 10, 'busy:5432');
  const unused = leaseOf(member, 10, 'unused:5432');
  busy.usage.waiting = 2;
  await busy.lease.sync();
  await unused.lease.sync();
  expect(unused.lease.counters.syncs).toBe(1);
  await eventually(async () => expect(busy.lease.counters.syncs).toBeGreaterThanOrEqual(5), 5000);
  expect(unused.lease.counters.syncs).toBe(1);
  // Used again: renewed again.
  unused.usage.open = 1;
  const before = unused.lease.counters.syncs;
  await eventually(async () => expect(unused.lease.counters.syncs).toBeGreaterThan(before), 5000);
});
