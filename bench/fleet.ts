/**
 * Fleet benchmark: one Postgres server's connection budget shared by several API instances through Redis.
 * N stores (1,000 by default) have their databases on a Postgres of the benchmark's own with a small
 * max_connections (50 by default: a budget of 50 − 3 reserved − TENANT_SERVER_HEADROOM 12 = 35); requests pick
 * a store by Zipf (s = 1.1) and name it with X-Store-Id. The same work is sent to one instance, then spread
 * over three (one autocannon per instance, the connections split between them), in the same run:
 *   1 instance   the whole budget for one process
 *   3 instances  three processes sharing it through leases
 * Printed per scenario: throughput, latency, non-2xx answers, sessions the server refused (53300), fenced
 * stores, and the server's peak sessions against its max_connections. Goals: 3 / 1 ≥ 0.9, 0 refused, 0 fenced.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import autocannon from 'autocannon';
import { latestSchemaVersion, runMigrations } from '../src/db/migrate';
import { withClient } from '../src/db/pg-client';
import { ident } from '../src/db/tenant-server-admin';
import type { TenantConnection } from '../src/db/tenant-types';
import { Encryptor, secretContext } from '../src/lib/crypto';
import { migrateTenant } from '../src/provisioning/tenant-db';
import { startPasswordServer, type PasswordServer } from '../test/helpers/password-server';
import { DATABASE_BYTES, scratchRoot } from '../test/helpers/scratch';
import { admin, databaseUrl, printTable, startServer, stopProcess } from './common';
import { zipfSampler } from '../test/helpers/zipf';

const PREFIX = 'tenantry_bench_fleet';
const ROLE = 'fleet_store';
const PASSWORD = 'bench-fleet-role-password';
const BASE_PORT = Number(process.env.BENCH_FLEET_PORT ?? 3990);

export interface FleetOptions {
  stores: number;
  duration: number;
  connections: number;
  rounds: number;
  /** API instances of the fleet scenario (3). */
  instances: number;
  /** max_connections of the benchmark's Postgres. */
  maxConnections: number;
}

interface FleetResult {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  /** Sessions the server refused (53300), as the instances counted them. */
  refused: number;
  /** Requests answered 503 busy. */
  busy: number;
  fenced: number;
  peakServer: number;
  peakTenant: number;
  budget: number;
}

interface ServerStats {
  key: string;
  budget: number;
  serverRefusals: number;
  busyRefusals: number;
  leased: number;
  allowance: number;
  open: number;
  waiting: number;
}

/**
 * BENCH_VERBOSE: every half second of the run, what the instances together lease, may open, have open, and
 * how many requests wait, summed over the instances; printed as averages after the scenario.
 */
async function sampleLeases(ports: number[], serverKey: string, stop: { done: boolean }): Promise<string> {
  const sums = { leased: 0, allowance: 0, open: 0, waiting: 0 };
  let n = 0;
  while (!stop.done) {
    const all = await Promise.all(ports.map(poolsOf));
    for (const p of all) {
      const s = p.servers?.find((x) => x.key === serverKey);
      if (!s) continue;
      sums.leased += s.leased;
      sums.allowance += s.allowance;
      sums.open += s.open;
      sums.waiting += s.waiting;
    }
    n++;
    await new Promise((r) => setTimeout(r, 500));
  }
  const avg = (v: number) => (v / Math.max(1, n)).toFixed(1);
  return `leased ${avg(sums.leased)}, allowance ${avg(sums.allowance)}, open ${avg(sums.open)}, waiting ${avg(sums.waiting)} (averages of ${n} samples, summed over the instances)`;
}

const storeDb = (i: number) => `${PREFIX}_t_${String(i).padStart(4, '0')}`;

/** The benchmark's Postgres: a throw-away cluster (see test/helpers/password-postgres.ts), no fsync. */
async function startBenchPostgres(maxConnections: number, stores: number): Promise<PasswordServer> {
  const root = scratchRoot((stores + 10) * DATABASE_BYTES);
  console.log(`a Postgres with max_connections ${maxConnections}, its data under ${root}`);
  return startPasswordServer(
    randomBytes(9).toString('hex'),
    60_000,
    { max_connections: maxConnections, fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
    { TMPDIR: root },
  );
}

const adminUrlOf = (pgServer: PasswordServer) =>
  `postgres://postgres:${pgServer.password}@${pgServer.host}:${pgServer.port}/postgres`;

const connectionOf = (pgServer: PasswordServer, database: string): TenantConnection => ({
  host: pgServer.host,
  port: pgServer.port,
  database,
  user: ROLE,
  password: PASSWORD,
});

/** One migrated template with 40 products, copied once per store (a file copy: a few ms each). */
async function prepareTenants(pgServer: PasswordServer, stores: number): Promise<void> {
  const started = Date.now();
  const adminUrl = adminUrlOf(pgServer);
  const template = `${PREFIX}_tpl`;
  await withClient(adminUrl, async (c) => {
    await c.query(`CREATE ROLE ${ident(ROLE)} LOGIN PASSWORD '${PASSWORD}'`);
    await c.query(`CREATE DATABASE ${template} OWNER ${ident(ROLE)}`);
  });
  await migrateTenant(connectionOf(pgServer, template));
  await withClient(connectionOf(pgServer, template), async (c) => {
    await c.query(`INSERT INTO products (sku, name, description, price_cents, created_at)
      SELECT 'SKU-' || g, 'Product ' || g, 'A fine product number ' || g, 100 * g, now() - g * interval '1 minute'
        FROM generate_series(1, 40) g`);
    await c.query(`INSERT INTO inventory (product_id, stock) SELECT id, 100 FROM products`);
  });
  await withClient(adminUrl, async (c) => {
    for (let i = 0; i < stores; i++) {
      for (let attempt = 0; ; attempt++) {
        try {
          await c.query(`CREATE DATABASE ${storeDb(i)} TEMPLATE ${template} OWNER ${ident(ROLE)} STRATEGY FILE_COPY`);
          break;
        } catch (err) {
          // The template's last session may still be on its way out.
          if ((err as { code?: string }).code !== '55006' || attempt > 100) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
  });
  console.log(`${stores} store databases made from a template in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/** A fresh master DB (on the usual bench server) with N active stores, one owner, on the fleet's Postgres. */
async function prepareMaster(
  pgServer: PasswordServer,
  stores: number,
  encryptor: Encryptor,
): Promise<{ url: string; ids: string[] }> {
  const master = `${PREFIX}_master`;
  await admin(`DROP DATABASE IF EXISTS ${master} WITH (FORCE)`);
  await admin(`CREATE DATABASE ${master}`);
  const url = databaseUrl(master);
  await runMigrations('master', { connectionString: url });
  const ids = await withClient(url, async (c) => {
    const { rows } = await c.query(
      `INSERT INTO users (email, password_hash, name) VALUES ('fleet-bench@example.test', 'x', 'Bench') RETURNING id`,
    );
    const owner = rows[0].id as string;
    const inserted = await c.query<{ id: string }>(
      `INSERT INTO stores (name, slug, status, owner_id)
         SELECT 'Fleet ' || n, 'fleet-' || n, 'active', $1 FROM generate_series(0, $2::int - 1) AS n ORDER BY n RETURNING id`,
      [owner, stores],
    );
    const storeIds = inserted.rows.map((r) => r.id);
    const creds = storeIds.map((id, i) =>
      encryptor.encryptJson(connectionOf(pgServer, storeDb(i)), secretContext.storeCredentials(id)),
    );
    await c.query(
      `INSERT INTO store_databases (store_id, mode, server, database_name, credentials, status, schema_version)
         SELECT id, 'managed', $3, 'bench', cred, 'ready', $4 FROM unnest($1::uuid[], $2::text[]) AS s(id, cred)`,
      [storeIds, creds, `${pgServer.host}:${pgServer.port}`, latestSchemaVersion('tenant')],
    );
    return storeIds;
  });
  return { url, ids };
}

/** Peak sessions on the server (every client backend but the sampler's own) while `stop.done` is false. */
async function samplePeak(adminUrl: string, stop: { done: boolean }): Promise<{ total: number; tenant: number }> {
  const peak = { total: 0, tenant: 0 };
  await withClient(adminUrl, async (c) => {
    while (!stop.done) {
      const { rows } = await c.query(
        `SELECT count(*)::int AS total, count(*) FILTER (WHERE application_name = 'tenantry-tenant')::int AS tenant
           FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`,
      );
      peak.total = Math.max(peak.total, rows[0].total);
      peak.tenant = Math.max(peak.tenant, rows[0].tenant);
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  return peak;
}

async function poolsOf(port: number): Promise<{ fencesTotal: number; servers?: ServerStats[] }> {
  const res = await fetch(`http://127.0.0.1:${port}/bench/pools`);
  return (await res.json()) as { fencesTotal: number; servers?: ServerStats[] };
}

/** One scenario: `instances` fresh API processes, the Zipf load split over them, their counters summed. */
async function runFleet(
  name: string,
  instances: number,
  opts: FleetOptions & { env: Record<string, string>; ids: string[]; adminUrl: string; serverKey: string },
): Promise<FleetResult> {
  const children: ChildProcess[] = [];
  const ports = Array.from({ length: instances }, (_, i) => BASE_PORT + i);
  try {
    for (const port of ports) children.push(await startServer({ ...opts.env, PORT: String(port) }));
    const zipf = zipfSampler(opts.ids.length, 1.1);
    const run = (port: number, connections: number, duration: number) =>
      autocannon({
        url: `http://127.0.0.1:${port}`,
        connections,
        duration,
        requests: [
          {
            method: 'GET',
            path: '/api/store/products',
            setupRequest: (req) => ({ ...req, headers: { ...req.headers, 'x-store-id': opts.ids[zipf()] } }),
          },
        ],
      });
    // The connections split over the instances, as a load balancer would.
    const share = (i: number) => Math.floor(opts.connections / instances) + (i < opts.connections % instances ? 1 : 0);
    await Promise.all(ports.map((port, i) => run(port, share(i), 2))); // warm-up: handles built, leases taken
    const stop = { done: false };
    const sampling = samplePeak(opts.adminUrl, stop);
    const leases = process.env.BENCH_VERBOSE ? sampleLeases(ports, opts.serverKey, stop) : undefined;
    const results = await Promise.all(ports.map((port, i) => run(port, share(i), opts.duration)));
    stop.done = true;
    const peak = await sampling;
    if (leases) console.log(`    ${name}: ${await leases}`);
    const pools = await Promise.all(ports.map(poolsOf));
    const server = (p: (typeof pools)[number]) => p.servers?.find((s) => s.key === opts.serverKey);
    const sum = (f: (r: autocannon.Result) => number) => results.reduce((n, r) => n + f(r), 0);
    return {
      name,
      rps: Math.round(sum((r) => r.requests.average)),
      p50: Math.max(...results.map((r) => r.latency.p50)),
      p99: Math.max(...results.map((r) => r.latency.p99)),
      non2xx: sum((r) => r.non2xx),
      errors: sum((r) => r.errors + r.timeouts),
      refused: pools.reduce((n, p) => n + (server(p)?.serverRefusals ?? 0), 0),
      busy: pools.reduce((n, p) => n + (server(p)?.busyRefusals ?? 0), 0),
      fenced: pools.reduce((n, p) => n + p.fencesTotal, 0),
      peakServer: peak.total,
      peakTenant: peak.tenant,
      budget: Math.max(0, ...pools.map((p) => server(p)?.budget ?? 0)),
    };
  } finally {
    await Promise.all(children.map(stopProcess));
  }
}

export async function fleetBenchmark(opts: FleetOptions): Promise<void> {
  const keys = `bench:${randomBytes(32).toString('base64')}`;
  const encryptor = new Encryptor([{ id: 'bench', key: Buffer.from(keys.slice(6), 'base64') }]);
  const pgServer = await startBenchPostgres(opts.maxConnections, opts.stores);
  try {
    const adminUrl = adminUrlOf(pgServer);
    await prepareTenants(pgServer, opts.stores);
    const { url, ids } = await prepareMaster(pgServer, opts.stores, encryptor);
    const env = {
      NODE_ENV: 'development',
      DATABASE_URL: url,
      WORKER: 'off',
      LOG_LEVEL: 'warn',
      // Every instance of one run shares the leases; another run never sees them.
      REDIS_PREFIX: `bench-fleet-${randomBytes(4).toString('hex')}`,
      TENANT_SERVERS: adminUrl,
      JWT_SECRET: randomBytes(32).toString('hex'),
      ENCRYPTION_KEYS: keys,
      MASTER_POOL_MAX: '6',
      // Every bench store has one owner: an owner's share would cap the fleet at a quarter of the budget.
      TENANT_OWNER_SHARE: '100',
      TENANT_CACHE_MAX: String(Math.max(5000, opts.stores)),
    };
    const common = { ...opts, env, ids, adminUrl, serverKey: `${pgServer.host}:${pgServer.port}` };
    const scenarios: [string, number][] = [
      ['1 instance', 1],
      [`${opts.instances} instances`, opts.instances],
    ];
    const runs = new Map<string, FleetResult[]>(scenarios.map(([name]) => [name, []]));
    // Rounds alternate the scenarios, so that a noisy moment on a shared machine favours neither; each keeps its best.
    for (let round = 1; round <= opts.rounds; round++) {
      for (const [name, instances] of round % 2 ? scenarios : [...scenarios].reverse()) {
        const r = await runFleet(name, instances, common);
        console.log(
          `  round ${round}: ${name}: ${r.rps} req/s, p99 ${r.p99} ms, non-2xx ${r.non2xx}, refused ${r.refused}, fenced ${r.fenced}, peak ${r.peakServer}/${opts.maxConnections}`,
        );
        runs.get(name)!.push(r);
      }
    }
    const results = scenarios.map(([name]) => {
      const all = runs.get(name)!;
      const best = all.reduce((a, b) => (b.rps > a.rps ? b : a));
      const total = (k: 'non2xx' | 'errors' | 'refused' | 'busy' | 'fenced') => all.reduce((n, r) => n + r[k], 0);
      const peak = (k: 'peakServer' | 'peakTenant') => Math.max(...all.map((r) => r[k]));
      return {
        ...best,
        non2xx: total('non2xx'),
        errors: total('errors'),
        refused: total('refused'),
        busy: total('busy'),
        fenced: total('fenced'),
        peakServer: peak('peakServer'),
        peakTenant: peak('peakTenant'),
      };
    });
    console.log(
      `\n${opts.stores} stores, Zipf s=1.1, ${opts.connections} connections, ${opts.duration} s, best of ${opts.rounds}; errors, refusals and peaks over every round`,
    );
    printTable(
      [
        'scenario',
        'req/s',
        'p50 ms',
        'p99 ms',
        'errors',
        'non-2xx',
        '503 busy (with warm-up)',
        'refused (53300, with warm-up)',
        'fenced',
        'budget',
        'peak tenant conns',
        'peak server conns / limit',
      ],
      results.map((r) => [
        r.name,
        r.rps,
        r.p50,
        r.p99,
        r.errors,
        r.non2xx,
        r.busy,
        r.refused,
        r.fenced,
        r.budget,
        r.peakTenant,
        `${r.peakServer} / ${opts.maxConnections}`,
      ]),
    );
    const [one, fleet] = results;
    console.log(
      `\n${fleet.name} / 1 instance = ${(fleet.rps / one.rps).toFixed(2)}  (goal ≥ 0.90); refused ${one.refused + fleet.refused} (goal 0); fenced ${one.fenced + fleet.fenced} (goal 0)`,
    );
  } finally {
    await pgServer.stop();
  }
}
