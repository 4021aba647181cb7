import type pg from 'pg';
import {
  fillServer,
  poolsOf,
  refusalLines,
  sampleServer,
  serverIn,
  startLoad,
  until,
  useFleet,
  type FleetProcess,
  type PoolStats,
} from '../helpers/fleet';

/**
 * A fleet (three API instances and a worker, each its own process) sharing one Postgres server's budget
 * through Redis, when something around it fails: Redis goes away for 10 s under load (every process falls
 * back to a static share and keeps serving; leasing resumes when Redis is back), and someone else fills the
 * server with sessions of their own (requests wait or get 503 "busy"; no store is fenced).
 */
const MAX_CONNECTIONS = 30;
const REDIS_DOWN_MS = 10_000;
const fleet = useFleet('fleet-outages', {
  stores: 60,
  owners: 6,
  instances: 3,
  maxConnections: MAX_CONNECTIONS,
  // A fence would last the whole test: a request after the filler has gone could not miss it.
  env: { TENANT_IDLE_MS: '1000', TENANT_FENCE_MS: '60000' },
});
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const pools = (p: FleetProcess) => poolsOf(p, fleet.token);
const entry = (stats: PoolStats) => {
  const e = serverIn(stats, fleet.server.key);
  if (!e) throw new Error(`${stats.instanceId} has no entry for ${fleet.server.key}: ${JSON.stringify(stats.servers)}`);
  return e;
};
/** Every instance's view of the server, once each has one. */
const entries = async () => (await Promise.all(fleet.instances.map(pools))).map(entry);

test('Redis stopped for 10 s under load: every instance keeps serving on a static share, and leases again once Redis is back', async () => {
  const { instances, stores, server, redis, t } = fleet;
  const sampler = await sampleServer(t, server);
  const load = startLoad(t, { instances: () => instances, stores, concurrency: 18 });
  const leasing = await until(
    'a lease on every instance',
    async () => {
      const all = await entries();
      return all.every((e) => e.mode === 'leased' && e.leased > 0) ? all : undefined;
    },
    30_000,
    200,
  );
  const budget = leasing[0].budget;
  load.phase();
  // Tenant sessions on the server, per phase: leasing, Redis away, Redis back (until leasing again), after.
  const peaks: Record<string, number> = { leasing: sampler.phase().peakTenant };

  await redis.kill();
  // Each instance notices (a lease call Redis does not answer) and takes its static share.
  const fallen = await until(
    'the static share on every instance',
    async () => {
      const all = await entries();
      return all.every((e) => e.mode === 'static') ? all : undefined;
    },
    REDIS_DOWN_MS - 1000,
    200,
  );
  await sleep(REDIS_DOWN_MS - 1000);
  const duringOutage = load.phase();
  const atEnd = await entries();
  peaks.redisAway = sampler.phase().peakTenant;
  await redis.start();

  // Leasing again everywhere, the leases together within the budget. (Redis comes back empty, the others' static
  // shares still open: until every process has registered, none is granted more than it held.)
  let leasedPeak = 0;
  const back = await until(
    'leases again on every instance, within the budget',
    async () => {
      const inRedis = [...(await fleet.leasesInRedis()).values()].reduce((a, b) => a + b, 0);
      leasedPeak = Math.max(leasedPeak, inRedis);
      const all = await entries();
      return all.every((e) => e.mode === 'leased' && e.leased > 0 && e.leasedTotal <= budget) ? all : undefined;
    },
    20_000,
    200,
  );
  peaks.redisBack = sampler.phase().peakTenant;
  await sleep(2000);
  const afterwards = load.phase();
  const final = await Promise.all(instances.map(pools));
  await load.stop();
  await sampler.stop();
  peaks.after = sampler.phase().peakTenant;

  // Served all along: by every instance while Redis was away, and after.
  for (const p of instances) {
    expect({ instance: p.name, served: (duringOutage.okBy.get(p.name) ?? 0) > 0 }).toEqual({
      instance: p.name,
      served: true,
    });
    expect({ instance: p.name, served: (afterwards.okBy.get(p.name) ?? 0) > 0 }).toEqual({
      instance: p.name,
      served: true,
    });
  }
  expect({ other: load.total.other, samples: load.total.otherSamples }).toEqual({ other: 0, samples: [] });
  expect(load.total.unreachable).toBe(0);
  // The static shares together stay within the budget: the last known budget over the last known processes.
  for (const e of [...fallen, ...atEnd])
    expect(e.allowance * Math.max(e.instances, instances.length)).toBeLessThanOrEqual(budget);
  for (const e of back) expect(e.leasedTotal).toBeLessThanOrEqual(budget);
  expect(leasedPeak).toBeLessThanOrEqual(budget);
  expect(sampler.peakTotal).toBeLessThan(fleet.ordinarySlots);
  // Within the budget in every phase, the first moments after Redis is back included.
  const overBudget = Object.entries(peaks).filter(([, peak]) => peak > budget);
  expect({ budget, overBudget }).toEqual({ budget, overBudget: [] });
  for (const stats of final) {
    expect(entry(stats).serverRefusals).toBe(0);
    expect({ fenced: stats.fenced, fencesTotal: stats.fencesTotal }).toEqual({ fenced: [], fencesTotal: 0 });
  }
  for (const p of [...instances, fleet.worker])
    expect({ process: p.name, alive: p.alive(), refusals: refusalLines(p.output()) }).toEqual({
      process: p.name,
      alive: true,
      refusals: [],
    });
}, 120_000);

test('a server filled by someone else: requests get 503 busy with Retry-After or wait for a slot; no store is fenced, and they are served as soon as there is room', async () => {
  const { instances, stores, server, t } = fleet;
  const squatters: pg.Client[] = [];
  t.defer('the sessions filling the server', () =>
    Promise.all(squatters.splice(0).map((c) => c.end().catch(() => {}))),
  );
  // Tenantry's idle connections closed (TENANT_IDLE_MS), so that the filler takes every slot.
  await until(
    "Tenantry's connections closed",
    async () => ((await entries()).every((e) => e.open === 0) ? true : undefined),
    20_000,
    200,
  );
  squatters.push(...(await fillServer(server)));
  expect(squatters.length).toBeGreaterThan(0);

  const ask = (p: FleetProcess, store: string) =>
    fetch(`http://127.0.0.1:${p.port}/api/store/products?limit=5`, {
      headers: { 'X-Store-Id': store },
      signal: AbortSignal.timeout(15_000),
    });
  // Every instance, several stores: no slot anywhere, so each answers busy once its wait is over — or is served,
  // when a session of someone else's (a budget check, the worker's) ended during its wait and it took the slot.
  const asked = await Promise.all(instances.flatMap((p, i) => [0, 1].map((k) => ask(p, stores[i * 2 + k]))));
  const refused: Response[] = [];
  for (const res of asked) {
    const body = (await res.json()) as { code?: string; detail?: string };
    if (res.status === 200) continue;
    expect({ status: res.status, code: body.code, busy: /busy/i.test(body.detail ?? '') }).toEqual({
      status: 503,
      code: 'TENANT_UNAVAILABLE',
      busy: true,
    });
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    refused.push(res);
  }
  expect(refused.length).toBeGreaterThan(0);
  const whileFull = await Promise.all(instances.map(pools));
  for (const stats of whileFull)
    expect({ fenced: stats.fenced, fencesTotal: stats.fencesTotal }).toEqual({ fenced: [], fencesTotal: 0 });
  // The refusals were the server's (53300), counted as such.
  expect(whileFull.reduce((n, s) => n + entry(s).serverRefusals, 0)).toBeGreaterThan(0);
  expect(whileFull.reduce((n, s) => n + entry(s).busyRefusals, 0)).toBeGreaterThanOrEqual(refused.length);

  // A request waiting on the full server is served when one slot frees up within its wait.
  const waiting = ask(instances[0], stores[0]);
  await sleep(300);
  await squatters.shift()!.end();
  expect((await waiting).status).toBe(200);

  // Room again: the stores refused before are served at once (no fence to sit out), by every instance.
  await Promise.all(squatters.splice(0).map((c) => c.end()));
  const served = await Promise.all(instances.flatMap((p, i) => [0, 1].map((k) => ask(p, stores[i * 2 + k]))));
  expect(served.map((r) => r.status)).toEqual(served.map(() => 200));
  for (const stats of await Promise.all(instances.map(pools)))
    expect({ fenced: stats.fenced, fencesTotal: stats.fencesTotal }).toEqual({ fenced: [], fencesTotal: 0 });
}, 90_000);
