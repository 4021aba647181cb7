/**
 * Routing benchmark: autocannon against a running server, every scenario in one run, side by side.
 *   raw         the product-list query on one fixed pg pool (express + pg: this stack's limit)
 *   untenanted  the store API's handler on one fixed handle, no tenant resolution
 *   routed      GET /api/store/products with one hot store's Host header
 *   zipf        1,000 stores, Zipf-distributed (s = 1.1) over their hostnames
 *   round-robin the same stores, every request a different store
 * It also measures how fast this machine opens Postgres connections, the bound for round-robin.
 */
import { randomBytes } from 'node:crypto';
import autocannon from 'autocannon';
import pg from 'pg';
import { Encryptor, secretContext } from '../src/lib/crypto';
import {
  admin,
  ADMIN_URL,
  benchConnection,
  databaseUrl,
  printTable,
  stableUuid,
  startServer,
  stopProcess,
  summarize,
  type Summary,
} from './common';
import { runMigrations } from '../src/db/migrate';
import { withClient } from '../src/db/pg-client';
import { AdminPools, ensureTenantDatabase, ident } from '../src/db/tenant-server-admin';
import { migrateTenant } from '../src/provisioning/tenant-db';
import { productListSql } from '../src/storefront/products.service';
import { zipfSampler } from '../test/helpers/zipf';

const PREFIX = 'tenantry_bench';
const ROLE = `${PREFIX}_role`;
const PASSWORD = 'bench-role-password';
export const PORT = Number(process.env.BENCH_PORT ?? 3999);
const CONNECTIONS_MAX = 90;

export interface ScenarioResult extends Summary {
  peakTenantConnections: number;
  peakServerConnections: number;
}

const tenantConnection = (database: string) => benchConnection(database, { user: ROLE, password: PASSWORD });

/** A stable UUID per store index, so re-runs reuse the databases made before. */
const storeUuid = (i: number) => stableUuid('tenantry-bench-store', i);

/** The template (schema + 20 products) and one database per store made from it; kept across runs. */
export async function prepareTenants(stores: number): Promise<void> {
  const template = `${PREFIX}_tpl`;
  const exists = await admin('SELECT 1 FROM pg_database WHERE datname = $1', [template]);
  if (!exists.rowCount) {
    const pools = new AdminPools();
    await ensureTenantDatabase(pools, ADMIN_URL, { database: template, role: ROLE, password: PASSWORD }).finally(() =>
      pools.close(),
    );
    await migrateTenant(tenantConnection(template));
    await withClient(databaseUrl(template), async (c) => {
      await c.query(`INSERT INTO products (sku, name, description, price_cents, created_at)
        SELECT 'SKU-' || g, 'Product ' || g, 'A fine product number ' || g, 100 * g, now() - g * interval '1 minute'
          FROM generate_series(1, 40) g`);
      await c.query(`INSERT INTO inventory (product_id, stock) SELECT id, 100 FROM products`);
    });
  }
  // All bench stores share one role; per-store roles keep their own limit in real use.
  await admin(`ALTER ROLE ${ident(ROLE)} CONNECTION LIMIT -1`);
  const have = new Set(
    (await admin(`SELECT datname FROM pg_database WHERE datname LIKE '${PREFIX}_t_%'`)).rows.map(
      (r) => r.datname as string,
    ),
  );
  const missing = Array.from({ length: stores }, (_, i) => `${PREFIX}_t_${String(i).padStart(4, '0')}`).filter(
    (d) => !have.has(d),
  );
  if (missing.length) console.log(`creating ${missing.length} tenant databases from the template…`);
  const started = Date.now();
  // Sequential: CREATE DATABASE … TEMPLATE needs the template to have no other session.
  await withClient(ADMIN_URL, async (c) => {
    for (const d of missing)
      await c.query(`CREATE DATABASE ${ident(d)} TEMPLATE ${ident(template)} OWNER ${ident(ROLE)}`);
  });
  if (missing.length) console.log(`  done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/** A fresh master DB with N active stores pointing at the bench tenant databases. */
export async function prepareMaster(stores: number, encryptor: Encryptor): Promise<string> {
  const master = `${PREFIX}_master`;
  await admin(`DROP DATABASE IF EXISTS ${master} WITH (FORCE)`);
  await admin(`CREATE DATABASE ${master}`);
  const url = databaseUrl(master);
  await runMigrations('master', { connectionString: url });
  await withClient(url, async (c) => {
    const { rows } = await c.query(
      `INSERT INTO users (email, password_hash, name) VALUES ('bench@example.test', 'x', 'Bench') RETURNING id`,
    );
    const owner = rows[0].id as string;
    const ids = Array.from({ length: stores }, (_, i) => storeUuid(i));
    const creds = ids.map((id, i) =>
      encryptor.encryptJson(
        tenantConnection(`${PREFIX}_t_${String(i).padStart(4, '0')}`),
        secretContext.storeCredentials(id),
      ),
    );
    await c.query(
      `INSERT INTO stores (id, name, slug, status, owner_id)
         SELECT id, 'Bench ' || n, 'bench-' || n, 'active', $2 FROM unnest($1::uuid[]) WITH ORDINALITY AS s(id, n)`,
      [ids, owner],
    );
    await c.query(
      `INSERT INTO store_databases (store_id, mode, server, database_name, credentials, status, schema_version)
         SELECT id, 'managed', 'bench', 'bench', cred, 'ready', 1 FROM unnest($1::uuid[], $2::text[]) AS s(id, cred)`,
      [ids, creds],
    );
    await c.query(
      `INSERT INTO store_hostnames (hostname, store_id, status, verified_at)
         SELECT 's' || (n - 1) || '.bench.test', id, 'verified', now() FROM unnest($1::uuid[]) WITH ORDINALITY AS s(id, n)`,
      [ids],
    );
  });
  return url;
}

/**
 * How fast this machine opens Postgres connections, eight at a time: to one database (connect only), and
 * to a different database each time followed by the first query (what a routed request to a store without
 * a warm connection costs: a fresh backend with cold catalog caches).
 */
async function connectionOpenRate(stores: number): Promise<{ sameDb: number; freshDbWithQuery: number }> {
  const n = 240;
  const measure = async (database: (i: number) => string, query: boolean) => {
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < n) {
          const c = new pg.Client(tenantConnection(database(next++)));
          await c.connect();
          if (query) await c.query(productListSql({ includeInactive: false, after: null }, [21]), [21]);
          await c.end();
        }
      }),
    );
    return Math.round(n / ((performance.now() - t) / 1000));
  };
  const db = (i: number) => `${PREFIX}_t_${String(i % stores).padStart(4, '0')}`;
  return {
    sameDb: await measure(() => db(0), false),
    freshDbWithQuery: await measure((i) => db(stores - 1 - i), true),
  };
}

async function sampleConnections(stop: { done: boolean }): Promise<{ tenant: number; total: number }> {
  const peak = { tenant: 0, total: 0 };
  await withClient(ADMIN_URL, async (c) => {
    while (!stop.done) {
      const { rows } = await c.query(
        `SELECT count(*) FILTER (WHERE application_name = 'tenantry-tenant')::int AS tenant, count(*)::int AS total
           FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname LIKE '${PREFIX}%'`,
      );
      peak.tenant = Math.max(peak.tenant, rows[0].tenant);
      peak.total = Math.max(peak.total, rows[0].total);
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  return peak;
}

/** Wait until the tenant connections of an earlier scenario have idled out, so every scenario starts alike. */
export async function settle(): Promise<void> {
  const deadline = Date.now() + 20_000;
  await withClient(ADMIN_URL, async (c) => {
    while (Date.now() < deadline) {
      const { rows } = await c.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'tenantry-tenant' AND datname LIKE '${PREFIX}%'`,
      );
      if (rows[0].n <= 10) return;
      await new Promise((r) => setTimeout(r, 250));
    }
  });
}

export async function runScenario(
  name: string,
  opts: { path: string; host?: () => string; duration: number; connections: number; port?: number },
): Promise<ScenarioResult> {
  await settle();
  const run = (duration: number) =>
    autocannon({
      url: `http://127.0.0.1:${opts.port ?? PORT}`,
      connections: opts.connections,
      duration,
      requests: [
        {
          method: 'GET',
          path: opts.path,
          setupRequest: (req) => (opts.host ? { ...req, headers: { ...req.headers, host: opts.host() } } : req),
        },
      ],
    });
  await run(2); // warm-up
  const stop = { done: false };
  const sampling = sampleConnections(stop);
  const r = await run(opts.duration);
  stop.done = true;
  const peak = await sampling;
  return {
    ...summarize(name, r),
    peakTenantConnections: peak.tenant,
    peakServerConnections: peak.total,
  };
}

/** The fastest run of a scenario, with the errors of all its runs and the highest connection peaks. */
export function bestOf(runs: ScenarioResult[]): ScenarioResult {
  const best = runs.reduce((a, b) => (b.rps > a.rps ? b : a));
  const total = (k: 'errors' | 'non2xx') => runs.reduce((sum, r) => sum + r[k], 0);
  const peak = (k: 'peakTenantConnections' | 'peakServerConnections') => Math.max(...runs.map((r) => r[k]));
  return {
    ...best,
    errors: total('errors'),
    non2xx: total('non2xx'),
    peakTenantConnections: peak('peakTenantConnections'),
    peakServerConnections: peak('peakServerConnections'),
  };
}

export function printResults(results: ScenarioResult[]): void {
  printTable(
    ['scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'peak tenant conns', 'peak server conns'],
    results.map((r) => [
      r.name,
      r.rps,
      r.p50,
      r.p99,
      r.errors,
      r.non2xx,
      r.peakTenantConnections,
      r.peakServerConnections,
    ]),
  );
}

/** A fresh encryption key and the master DB of `stores` bench stores (their databases made once, kept). */
export async function prepareRouting(stores: number): Promise<{ keys: string; masterUrl: string }> {
  const keys = `bench:${randomBytes(32).toString('base64')}`;
  const encryptor = new Encryptor([{ id: 'bench', key: Buffer.from(keys.slice(6), 'base64') }]);
  await prepareTenants(stores);
  return { keys, masterUrl: await prepareMaster(stores, encryptor) };
}

/** The bench server's settings: the bench stores' master, the cap, one owner's share lifted. */
export function routingServerEnv(masterUrl: string, keys: string, port = PORT): Record<string, string> {
  return {
    NODE_ENV: 'development',
    PORT: String(port),
    DATABASE_URL: masterUrl,
    REDIS_PREFIX: `tenantry-bench-${port}`,
    WORKER: 'off',
    LOG_LEVEL: 'warn',
    JWT_SECRET: randomBytes(32).toString('hex'),
    ENCRYPTION_KEYS: keys,
    MASTER_POOL_MAX: '6',
    TENANT_CONNECTIONS_MAX: String(CONNECTIONS_MAX),
    // Every bench store has one owner: an owner's share would cap the many-store scenarios at a quarter.
    TENANT_OWNER_SHARE: '100',
    TENANT_CACHE_MAX: '5000',
    BENCH_FIXED_STORE: storeUuid(0),
    BENCH_FIXED_CONNECTION: JSON.stringify(tenantConnection(`${PREFIX}_t_0000`)),
  };
}

export async function routingBenchmark(opts: {
  stores: number;
  duration: number;
  connections: number;
  rounds: number;
  scenarios?: number[];
}): Promise<void> {
  const { keys, masterUrl } = await prepareRouting(opts.stores);
  const openRate = await connectionOpenRate(opts.stores);
  console.log(
    `connections this machine opens (8 at a time): ${openRate.sameDb}/s to one database; ${openRate.freshDbWithQuery}/s to a different database each, with the first query`,
  );

  const server = await startServer(routingServerEnv(masterUrl, keys));
  try {
    const zipf = zipfSampler(opts.stores, 1.1);
    let next = 0;
    const common = { duration: opts.duration, connections: opts.connections };
    const scenarios: [string, Parameters<typeof runScenario>[1]][] = [
      ['raw (fixed pg pool)', { ...common, path: '/bench/raw' }],
      ['untenanted (fixed handle)', { ...common, path: '/bench/untenanted' }],
      ['routed, 1 hot store', { ...common, path: '/api/store/products', host: () => 's0.bench.test' }],
      [
        `${opts.stores} stores, Zipf s=1.1`,
        { ...common, path: '/api/store/products', host: () => `s${zipf()}.bench.test` },
      ],
      [
        `${opts.stores} stores, round-robin`,
        { ...common, path: '/api/store/products', host: () => `s${next++ % opts.stores}.bench.test` },
      ],
    ];
    // Rounds alternate the scenarios so that a noisy moment on this shared machine does not favour one;
    // each scenario keeps its best round.
    const runs = new Map<string, ScenarioResult[]>(scenarios.map(([name]) => [name, []]));
    const chosen = scenarios.filter((_, i) => !opts.scenarios || opts.scenarios.includes(i + 1));
    for (let round = 1; round <= opts.rounds; round++) {
      for (const [name, scenario] of chosen) {
        const r = await runScenario(name, scenario);
        console.log(`  round ${round}: ${name}: ${r.rps} req/s, p99 ${r.p99} ms, errors ${r.errors + r.non2xx}`);
        if (process.env.BENCH_VERBOSE)
          console.log('   ', JSON.stringify(await (await fetch(`http://127.0.0.1:${PORT}/bench/pools`)).json()));
        runs.get(name)!.push(r);
      }
    }
    if (chosen.length < scenarios.length) {
      printResults(chosen.map(([name]) => bestOf(runs.get(name)!)));
      return;
    }
    const results = scenarios.map(([name]) => bestOf(runs.get(name)!));
    printResults(results);
    const [raw, untenanted, routed, zipfR, rr] = results;
    const ratio = (a: number, b: number) => (a / b).toFixed(2);
    console.log(`\nrouted / untenanted = ${ratio(routed.rps, untenanted.rps)}  (target ≥ 0.95)`);
    console.log(`routed / raw        = ${ratio(routed.rps, raw.rps)}  (target ≥ 0.80)`);
    console.log(
      `Zipf / routed       = ${ratio(zipfR.rps, routed.rps)}  (target ≥ 0.60), errors ${zipfR.errors + zipfR.non2xx}, peak tenant conns ${zipfR.peakTenantConnections} (cap ${CONNECTIONS_MAX})`,
    );
    console.log(
      `round-robin / connection+first-query rate = ${ratio(rr.rps, openRate.freshDbWithQuery)} (${rr.rps} vs ${openRate.freshDbWithQuery}/s; connect-only ${openRate.sameDb}/s), errors ${rr.errors + rr.non2xx}, peak tenant conns ${rr.peakTenantConnections}`,
    );
  } finally {
    await stopProcess(server);
  }
}
