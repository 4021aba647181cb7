/**
 * Drift benchmark: a drift check (runDriftCheck, what `tenantry tenants:drift` and GET /api/admin/tenants/drift
 * call) over the bench fleet — routing's store databases, all on one server — in this process, with the master
 * opened as the command line opens it. The clean fleet is checked with the default per-server concurrency and
 * with another value, rounds alternating; then once with an index added by hand to three databases (dropped
 * again at the end), to show the check reports exactly those. Goal (issue 14): a clean fleet of 1,000 in < 20 s.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { QueryTypes } from 'sequelize';
import { loadConfig } from '../src/config';
import { openMasterDb } from '../src/db/master';
import { latestSchemaVersion } from '../src/db/migrate';
import { withClient } from '../src/db/pg-client';
import { AdminPools } from '../src/db/tenant-server-admin';
import { tenantServers } from '../src/db/tenant-servers';
import { Encryptor } from '../src/lib/crypto';
import { DRIFT_PER_SERVER, runDriftCheck, type DriftReport, type HygieneDeps } from '../src/hygiene/drift';
import { Queues } from '../src/queue/queues';
import { databaseUrl, printTable } from './common';
import { prepareRouting } from './routing';

/** The value compared with the default: twice as many stores at once per server. */
const OTHER_PER_SERVER = DRIFT_PER_SERVER * 2;
/** The hand-added index of the differing run (a name no migration uses). */
const EXTRA_INDEX = 'products_bench_drift_idx';
/** What the command line gives the master pool (cli.ts withMaster). */
const MASTER_POOL = 9;

const benchDb = (i: number) => `tenantry_bench_t_${String(i).padStart(4, '0')}`;
const load = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');

interface Row {
  name: string;
  perServer: number;
  report: DriftReport;
  p50: number;
  p99: number;
  load: string;
}

/**
 * The bench master's store rows as provisioning leaves a managed store: the tenant server's key (the master's
 * own server, as with no TENANT_SERVERS), the database's name and the current schema version.
 */
async function registerAsManaged(deps: HygieneDeps): Promise<void> {
  const [server] = tenantServers(deps);
  await deps.master.sequelize.query(
    `UPDATE store_databases d SET server = $1, schema_version = $2,
            database_name = 'tenantry_bench_t_' || lpad((substring(s.slug FROM 7)::int - 1)::text, 4, '0')
       FROM stores s WHERE s.id = d.store_id AND s.slug LIKE 'bench-%'`,
    { bind: [server.key, latestSchemaVersion('tenant')] },
  );
}

/** Median and 99th percentile of the per-store times the check recorded. */
async function storeTimes(deps: HygieneDeps, checkId: string): Promise<{ p50: number; p99: number }> {
  const [row] = await deps.master.sequelize.query<{ p50: number; p99: number }>(
    `SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ms)::int AS p50,
            percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)::int AS p99
       FROM drift_check_stores WHERE check_id = $1`,
    { bind: [checkId], type: QueryTypes.SELECT },
  );
  return row;
}

const setIndex = (databases: string[], present: boolean) =>
  Promise.all(
    databases.map((d) =>
      withClient(databaseUrl(d), (c) =>
        c.query(
          present
            ? `CREATE INDEX IF NOT EXISTS ${EXTRA_INDEX} ON products (name)`
            : `DROP INDEX IF EXISTS ${EXTRA_INDEX}`,
        ),
      ),
    ),
  );

export async function driftBenchmark(opts: { stores: number; rounds: number }): Promise<void> {
  const { keys, masterUrl } = await prepareRouting(opts.stores);
  const config = loadConfig({
    ...process.env,
    NODE_ENV: 'development',
    DATABASE_URL: masterUrl,
    ENCRYPTION_KEYS: keys,
    JWT_SECRET: randomBytes(32).toString('hex'),
    LOG_LEVEL: 'warn',
    // The product's defaults: the code's own sql/tenant, the master's server as the tenant server.
    TENANT_MIGRATIONS_DIR: undefined,
    TENANT_SERVERS: undefined,
  });
  const deps: HygieneDeps = {
    config,
    masterUrl,
    master: openMasterDb(masterUrl, MASTER_POOL),
    encryptor: new Encryptor(config.encryptionKeys),
    adminPools: new AdminPools(),
    queues: new Queues({ config, redisPrefix: `tenantry-bench-drift` }),
  };
  const differing = [1, Math.floor(opts.stores / 2), opts.stores - 1].map(benchDb);
  try {
    await registerAsManaged(deps);
    // A run cut off earlier may have left the index behind.
    await setIndex(differing, false);
    console.log(`load average before: ${load()} (${os.cpus().length} CPUs)`);
    const rows: Row[] = [];
    const check = async (name: string, perServer: number) => {
      const loadAtStart = load();
      const report = await runDriftCheck(deps, 'bench', { perServer });
      const times = await storeTimes(deps, report.checkId);
      rows.push({ name, perServer, report, ...times, load: loadAtStart });
      console.log(
        `  ${name}, ${perServer} per server: ${report.checked} stores in ${(report.ms / 1000).toFixed(2)} s, ${report.differing} differ`,
      );
      return report;
    };
    for (let round = 1; round <= opts.rounds; round++) {
      // Alternating, so that a noisy moment on this shared machine does not favour one value.
      for (const perServer of [DRIFT_PER_SERVER, OTHER_PER_SERVER]) {
        const report = await check(`clean fleet, round ${round}`, perServer);
        if (report.differing)
          console.log(
            `  not clean: ${report.items
              .slice(0, 5)
              .map((i) => `${i.storeId} ${i.detail}`)
              .join('; ')}`,
          );
      }
    }
    await setIndex(differing, true);
    const report = await check(`index added to ${differing.length} databases`, DRIFT_PER_SERVER);
    const named = await deps.master.sequelize.query<{ database: string }>(
      `SELECT database_name AS database FROM store_databases WHERE store_id = ANY($1::uuid[]) ORDER BY 1`,
      { bind: [report.items.map((i) => i.storeId)], type: QueryTypes.SELECT },
    );
    for (const item of report.items) console.log(`    ${item.storeId}  ${item.kind}  ${item.detail}`);
    const exact = named.map((n) => n.database).join() === [...differing].sort().join();
    console.log(
      `  reported: ${named.map((n) => n.database).join(', ') || 'none'} (${exact ? 'exactly the three changed' : `expected ${differing.join(', ')}`})`,
    );

    console.log();
    printTable(
      ['check', 'per server', 'stores', 'differ', 'time s', 'stores/s', 'store p50 ms', 'store p99 ms', 'load avg'],
      rows.map((r) => [
        r.name,
        r.perServer === DRIFT_PER_SERVER ? `${r.perServer} (default)` : r.perServer,
        r.report.checked,
        r.report.differing,
        (r.report.ms / 1000).toFixed(2),
        Math.round(r.report.checked / (r.report.ms / 1000)),
        r.p50,
        r.p99,
        r.load,
      ]),
    );
    const clean = rows.filter((r) => r.report.differing === 0 && r.perServer === DRIFT_PER_SERVER);
    if (clean.length) {
      const best = Math.min(...clean.map((r) => r.report.ms)) / 1000;
      console.log(`\nclean fleet of ${opts.stores}, default concurrency: best ${best.toFixed(2)} s  (goal < 20 s)`);
    }
    console.log(`load average after: ${load()}`);
  } finally {
    await setIndex(differing, false).catch((err: Error) =>
      console.error(`could not drop ${EXTRA_INDEX}: ${err.message}`),
    );
    await deps.queues.close();
    await deps.adminPools.close();
    await deps.master.sequelize.close();
  }
}
