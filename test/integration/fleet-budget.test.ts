import {
  metricOf,
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
import { queryWith } from '../helpers/stores';

/**
 * One connection budget per Postgres server, shared by a fleet: three API instances and a queue worker,
 * each its own process, on a Postgres whose max_connections is 30, with 200 stores there under
 * Zipf-distributed load spread over the instances. The server never refuses a session, no store is fenced,
 * the only errors are 503 "busy"; an instance killed under load leaves its leases to the others.
 */
const MAX_CONNECTIONS = 30;
const STORES = 200;
const fleet = useFleet('fleet-budget', {
  stores: STORES,
  owners: 10,
  instances: 3,
  maxConnections: MAX_CONNECTIONS,
  env: { TENANT_IDLE_MS: '2000', TENANT_FENCE_MS: '30000' },
});
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const pools = (p: FleetProcess) => poolsOf(p, fleet.token);
const entry = (stats: PoolStats) => {
  const e = serverIn(stats, fleet.server.key);
  if (!e) throw new Error(`${stats.instanceId} has no entry for ${fleet.server.key}: ${JSON.stringify(stats.servers)}`);
  return e;
};

test('Zipf load over three instances and a worker: the server never refuses a session, no store is fenced, the only errors are 503 busy with Retry-After', async () => {
  const { instances, worker, stores, server, t } = fleet;
  const sampler = await sampleServer(t, server);
  const load = startLoad(t, { instances: () => instances, stores, concurrency: 24 });
  // Meanwhile the worker writes credit changes into a few store databases: it takes part in the budget too.
  const credited = stores.slice(0, 5);
  for (const storeId of credited) {
    const res = await fetch(`http://127.0.0.1:${instances[0].port}/api/admin/stores/${storeId}/credits/adjust`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${fleet.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ amount: 70, reason: 'fleet test' }),
      signal: AbortSignal.timeout(10_000),
    });
    expect(res.status).toBe(201);
  }
  // How many processes hold or want connections on the server, as the instances hear it, all along the load.
  let holders = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      const stats = await Promise.all(instances.map(pools)).catch(() => []);
      holders = Math.max(holders, ...stats.map((s) => serverIn(s, server.key)?.instances ?? 0));
      await sleep(250);
    }
  })();
  t.defer('the poll of the lease holders', () => {
    polling = false;
    return poll.catch(() => {});
  });
  // Enough load to have every process borrow and give back: at least 10 s and 1,000 answers.
  const started = Date.now();
  await until(
    '1,000 answers in 10 s or more',
    () => (Date.now() - started > 10_000 && load.total.ok + load.total.busy >= 1000) || undefined,
    60_000,
    200,
  );
  // The worker has synced the credits into the store databases (through its own lease).
  await until(
    'the credit caches synced by the worker',
    async () => {
      for (const database of fleet.databases.slice(0, credited.length)) {
        const [row] = await queryWith<{ balance: string }>(
          { host: server.host, port: server.port, user: 'postgres', password: server.password, database },
          'SELECT balance FROM credit_balance_cache',
        );
        if (Number(row?.balance) !== 70) return undefined;
      }
      return true;
    },
    30_000,
    250,
  );
  const seen = await Promise.all(instances.map(pools));
  polling = false;
  await poll;
  await load.stop();
  await sampler.stop();

  const counts = load.total;
  expect({ other: counts.other, samples: counts.otherSamples }).toEqual({ other: 0, samples: [] });
  expect(counts.unreachable).toBe(0);
  for (const p of instances) expect(counts.okBy.get(p.name) ?? 0).toBeGreaterThan(0);
  // Most requests are served: the budget is shared, not lost.
  expect(counts.ok).toBeGreaterThan(counts.busy);

  const budget = entry(seen[0]).budget;
  expect(budget).toBeGreaterThan(0);
  expect(budget).toBeLessThan(fleet.ordinarySlots);
  // As Postgres saw it: never all the slots ordinary roles may use (no session could have been refused),
  // and Tenantry's connections within the budget its processes share.
  expect(sampler.samples).toBeGreaterThan(10);
  expect(sampler.peakTotal).toBeLessThan(fleet.ordinarySlots);
  expect(sampler.peakTenant).toBeLessThanOrEqual(budget);
  for (const stats of seen) {
    const e = entry(stats);
    expect({ instance: stats.instanceId, budget: e.budget, mode: e.mode, refusals: e.serverRefusals }).toEqual({
      instance: stats.instanceId,
      budget,
      mode: 'leased',
      refusals: 0,
    });
    expect(e.leasedTotal).toBeLessThanOrEqual(budget);
    expect({ fenced: stats.fenced, fencesTotal: stats.fencesTotal }).toEqual({ fenced: [], fencesTotal: 0 });
  }
  // The same in each instance's metrics.
  for (const p of instances) {
    const metric = (name: string, labels?: Record<string, string>) => metricOf(p, fleet.token, name, labels);
    expect({
      instance: p.name,
      budget: await metric('tenantry_tenant_server_budget', { server: server.key }),
      refusals: await metric('tenantry_tenant_server_refusals_total', { server: server.key }),
      fences: await metric('tenantry_tenant_fences_total'),
    }).toEqual({ instance: p.name, budget, refusals: 0, fences: 0 });
  }
  // Three instances and the worker took part.
  expect(holders).toBe(4);
  for (const p of [...instances, worker])
    expect({ process: p.name, refusals: refusalLines(p.output()) }).toEqual({ process: p.name, refusals: [] });
  expect(worker.alive()).toBe(true);
}, 120_000);

test('SIGKILL to one instance under load: within 10 s its leases are gone and the two others use them', async () => {
  const { instances, stores, server, t } = fleet;
  const [a, b, victim] = instances;
  const sampler = await sampleServer(t, server);
  const load = startLoad(t, { instances: () => instances, stores, concurrency: 24 });
  // Every instance holds a lease under the load.
  const before = await until(
    'a lease on every instance',
    async () => {
      const stats = await Promise.all(instances.map(pools));
      return stats.every((s) => entry(s).leased > 0) ? stats : undefined;
    },
    30_000,
    200,
  );
  await sleep(2000);
  const [sa, sb, sv] = await Promise.all(instances.map(pools));
  const survivorsBefore = entry(sa).leased + entry(sb).leased;
  const victimLease = entry(sv).leased;
  expect(victimLease).toBeGreaterThan(0);
  expect((await fleet.leasesInRedis()).get(sv.instanceId)).toBeGreaterThan(0);

  victim.child.kill('SIGKILL');
  await victim.exited;
  const killedAt = Date.now();
  load.phase();
  // The bound: the dead instance's leases gone from Redis, and the survivors holding more than before.
  const after = await until(
    "the killed instance's leases in the survivors' hands",
    async () => {
      const gone = !(await fleet.leasesInRedis()).has(sv.instanceId);
      const [ea, eb] = (await Promise.all([a, b].map(pools))).map(entry);
      return gone && ea.leased + eb.leased > survivorsBefore ? { a: ea, b: eb, ms: Date.now() - killedAt } : undefined;
    },
    10_000,
    200,
  );
  // Served meanwhile, by the two that are left.
  const sinceKill = load.phase();
  await sleep(1000);
  const [fa, fb] = await Promise.all([a, b].map(pools));
  await load.stop();
  await sampler.stop();
  const counts = load.total;

  expect({ other: counts.other, samples: counts.otherSamples }).toEqual({ other: 0, samples: [] });
  expect(sinceKill.okBy.get(a.name) ?? 0).toBeGreaterThan(0);
  expect(sinceKill.okBy.get(b.name) ?? 0).toBeGreaterThan(0);
  expect(after.a.leasedTotal).toBeLessThanOrEqual(after.a.budget);
  expect(sampler.peakTotal).toBeLessThan(fleet.ordinarySlots);
  expect(sampler.peakTenant).toBeLessThanOrEqual(entry(before[0]).budget);
  for (const stats of [fa, fb]) {
    expect(entry(stats).serverRefusals).toBe(0);
    expect({ fenced: stats.fenced, fencesTotal: stats.fencesTotal }).toEqual({ fenced: [], fencesTotal: 0 });
  }
  for (const p of [a, b])
    expect({ process: p.name, refusals: refusalLines(p.output()) }).toEqual({ process: p.name, refusals: [] });
}, 90_000);
