/**
 * Fleet migration benchmark: N store databases (1,000 by default) on a Postgres of the benchmark's own, all at
 * the code's tenant schema; one more tenant migration (a column and an index on products) in a temporary
 * directory (TENANT_MIGRATIONS_DIR). Printed side by side, from one run:
 *   naive        each store in turn: connect, run the migration files with the same runner (postgres-migrations),
 *                on copies of the same databases (a sample when N is large: extrapolated, and said so)
 *   Tenantry     a fleet run (createRun, driven by a worker process: perServer at once, master records), timed by
 *                its own record (created → finished), once the worker's start-up jobs are done
 *   no-op run    a second run over the now up-to-date fleet (skipped from the master's records)
 *   requests     autocannon against one store the run does not migrate, during the run and without a run
 * Goals: Tenantry < 30 s for 1,000 stores and ≥ 5× faster than naive; no-op < 2 s; no errors during the run.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { loadConfig } from '../src/config';
import { openMasterDb } from '../src/db/master';
import { latestSchemaVersion, migrationFiles, migrationsDir, runMigrations } from '../src/db/migrate';
import { withClient } from '../src/db/pg-client';
import { ident } from '../src/db/tenant-server-admin';
import type { TenantConnection } from '../src/db/tenant-types';
import { Encryptor, secretContext } from '../src/lib/crypto';
import { createRun, FINAL_STATES, getRun, runDetails } from '../src/migrations/migration-runs.service';
import { migrateTenant, seedTenant } from '../src/provisioning/tenant-db';
import { QueueName, Queues } from '../src/queue/queues';
import { startPasswordServer, type PasswordServer } from '../test/helpers/password-server';
import { DATABASE_BYTES, scratchRoot } from '../test/helpers/scratch';
import { printTable, startServer, stopProcess } from './common';

const PREFIX = 'tenantry_bench_mig';
const ROLE = 'mig_store';
const PASSWORD = 'bench-migrations-role-password';
const API_PORT = Number(process.env.BENCH_MIGRATIONS_PORT ?? 3980);

export interface MigrationsOptions {
  stores: number;
  /** Stores the naive baseline migrates (at most `stores`); the rest is extrapolated. */
  naiveSample: number;
  perServer: number;
  /** autocannon connections against the store that is not migrated, and their requests per second together. */
  connections: number;
  rate: number;
}

const storeDb = (i: number) => `${PREFIX}_t_${String(i).padStart(4, '0')}`;
const naiveDb = (i: number) => `${PREFIX}_n_${String(i).padStart(4, '0')}`;

const adminUrlOf = (pg: PasswordServer) => `postgres://postgres:${pg.password}@${pg.host}:${pg.port}/postgres`;
const connectionOf = (pg: PasswordServer, database: string): TenantConnection => ({
  host: pg.host,
  port: pg.port,
  database,
  user: ROLE,
  password: PASSWORD,
});

/**
 * The code's tenant migrations plus `extra` more, each adding a column and an index to products, in a
 * temporary directory. The first is the one compared; the second, a run of the same size with requests meanwhile.
 */
function migrationsWithMore(extra: number): { dir: string; version: number } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-bench-migrations-'));
  const files = migrationFiles(migrationsDir('tenant'));
  for (const f of files) copyFileSync(path.join(migrationsDir('tenant'), f.fileName), path.join(dir, f.fileName));
  const base = latestSchemaVersion('tenant');
  for (let k = 1; k <= extra; k++) {
    writeFileSync(
      path.join(dir, `${String(base + k).padStart(4, '0')}_bench_products_note_${k}.sql`),
      `ALTER TABLE products ADD COLUMN bench_note_${k} text;
CREATE INDEX products_bench_note_${k}_idx ON products (bench_note_${k});
`,
    );
  }
  return { dir, version: base + extra };
}

/** A migrated template with 40 products, copied per database (a file copy: a few ms each). */
async function makeDatabases(pg: PasswordServer, names: string[]): Promise<void> {
  const adminUrl = adminUrlOf(pg);
  const template = `${PREFIX}_tpl`;
  await withClient(adminUrl, async (c) => {
    await c.query(`CREATE ROLE ${ident(ROLE)} LOGIN PASSWORD '${PASSWORD}'`);
    await c.query(`CREATE DATABASE ${template} OWNER ${ident(ROLE)}`);
  });
  await migrateTenant(connectionOf(pg, template));
  await seedTenant(connectionOf(pg, template), {
    id: '00000000-0000-4000-8000-000000000001',
    name: 'Bench',
    slug: 'bench',
  });
  await withClient(connectionOf(pg, template), async (c) => {
    await c.query(`INSERT INTO products (sku, name, description, price_cents, created_at)
      SELECT 'SKU-' || g, 'Product ' || g, 'A fine product number ' || g, 100 * g, now() - g * interval '1 minute'
        FROM generate_series(1, 40) g`);
  });
  await withClient(adminUrl, async (c) => {
    for (const name of names) {
      for (let attempt = 0; ; attempt++) {
        try {
          await c.query(`CREATE DATABASE ${name} TEMPLATE ${template} OWNER ${ident(ROLE)} STRATEGY FILE_COPY`);
          break;
        } catch (err) {
          // The template's last session may still be on its way out.
          if ((err as { code?: string }).code !== '55006' || attempt > 100) throw err;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
  });
}

/**
 * A fresh master DB with one active store per database, all recorded at `version`: on the benchmark's own
 * Postgres (the shared test server's load would be the run's, not the naive baseline's, which reads no master).
 */
async function prepareMaster(pg: PasswordServer, databases: string[], encryptor: Encryptor, version: number) {
  const master = `${PREFIX}_master`;
  await withClient(adminUrlOf(pg), (c) => c.query(`CREATE DATABASE ${master}`));
  const u = new URL(adminUrlOf(pg));
  u.pathname = `/${master}`;
  const url = u.toString();
  await runMigrations('master', { connectionString: url });
  const ids = await withClient(url, async (c) => {
    const { rows } = await c.query(
      `INSERT INTO users (email, password_hash, name) VALUES ('migrations-bench@example.test', 'x', 'Bench') RETURNING id`,
    );
    const inserted = await c.query<{ id: string }>(
      `INSERT INTO stores (name, slug, status, owner_id)
         SELECT 'Mig ' || n, 'mig-' || n, 'active', $1 FROM generate_series(0, $2::int - 1) AS n ORDER BY n RETURNING id`,
      [rows[0].id, databases.length],
    );
    const storeIds = inserted.rows.map((r) => r.id);
    const creds = storeIds.map((id, i) =>
      encryptor.encryptJson(connectionOf(pg, databases[i]), secretContext.storeCredentials(id)),
    );
    await c.query(
      `INSERT INTO store_databases (store_id, mode, server, database_name, credentials, status, schema_version)
         SELECT id, 'managed', $3, db, cred, 'ready', $4 FROM unnest($1::uuid[], $2::text[], $5::text[]) AS s(id, cred, db)`,
      [storeIds, creds, `${pg.host}:${pg.port}`, version, databases],
    );
    return storeIds;
  });
  return { url, ids };
}

/**
 * Until a fresh worker's start-up work is over: no job waiting or active on any queue but the migrations' for
 * a few looks in a row (bounded: a job that never ends is reported, and the run measured anyway).
 */
async function startUpDone(queues: Queues, timeoutMs = 240_000): Promise<void> {
  const others = Object.values(QueueName).filter((name) => name !== QueueName.tenantMigrations);
  const deadline = Date.now() + timeoutMs;
  await new Promise((r) => setTimeout(r, 1000)); // its schedulers upserted
  for (let calm = 0; calm < 3;) {
    if (Date.now() > deadline) {
      console.log(`the worker's start-up jobs still run after ${timeoutMs / 1000} s: measured meanwhile`);
      return;
    }
    const counts = await Promise.all(
      others.map((name) => queues.get(name).getJobCounts('active', 'waiting', 'prioritized', 'waiting-children')),
    );
    calm = counts.every((c) => Object.values(c).every((n) => n === 0)) ? calm + 1 : 0;
    await new Promise((r) => setTimeout(r, 500));
  }
}

const seconds = (ms: number) => (ms / 1000).toFixed(2);

export async function migrationsBenchmark(opts: MigrationsOptions): Promise<void> {
  const n = opts.stores;
  const sample = Math.min(n, opts.naiveSample);
  const keys = `bench:${randomBytes(32).toString('base64')}`;
  const encryptor = new Encryptor([{ id: 'bench', key: Buffer.from(keys.slice(6), 'base64') }]);
  const first = migrationsWithMore(1);
  const second = migrationsWithMore(2);
  const root = scratchRoot((n + sample + 10) * DATABASE_BYTES);
  console.log(`a Postgres of its own (data under ${root}), ${n} stores + 1 not migrated, naive on ${sample}`);
  const pg = await startPasswordServer(
    randomBytes(9).toString('hex'),
    60_000,
    { max_connections: 100, fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' },
    { TMPDIR: root },
  );
  const children: ChildProcess[] = [];
  let master: ReturnType<typeof openMasterDb> | undefined;
  let queues: Queues | undefined;
  try {
    let started = Date.now();
    // The fleet, one store the runs leave alone (the last), and the naive baseline's own copies.
    const fleet = Array.from({ length: n + 1 }, (_, i) => storeDb(i));
    const naive = Array.from({ length: sample }, (_, i) => naiveDb(i));
    await makeDatabases(pg, [...fleet, ...naive]);
    console.log(`${fleet.length + naive.length} databases made from a template in ${seconds(Date.now() - started)} s`);
    const { url, ids } = await prepareMaster(pg, fleet, encryptor, latestSchemaVersion('tenant'));
    // The store requests go to: already at the newest version, so the runs skip it without a connection.
    const probe = ids[n];
    await runMigrations('tenant', connectionOf(pg, fleet[n]), second.dir);
    await withClient(url, (c) =>
      c.query('UPDATE store_databases SET schema_version = $2 WHERE store_id = $1', [probe, second.version]),
    );

    // 1. Naive: one store after the other, the same runner and files.
    started = Date.now();
    for (const db of naive) await runMigrations('tenant', connectionOf(pg, db), first.dir);
    const naiveMs = ((Date.now() - started) / sample) * n;
    console.log(
      `naive: ${sample} stores in ${seconds(Date.now() - started)} s${sample < n ? ` → ${seconds(naiveMs)} s for ${n} (extrapolated)` : ''}`,
    );

    const env = {
      NODE_ENV: 'development',
      DATABASE_URL: url,
      LOG_LEVEL: 'warn',
      REDIS_PREFIX: `bench-mig-${randomBytes(4).toString('hex')}`,
      TENANT_SERVERS: adminUrlOf(pg),
      JWT_SECRET: randomBytes(32).toString('hex'),
      ENCRYPTION_KEYS: keys,
      MASTER_POOL_MAX: '8',
      TENANT_MIGRATE_ON_START: 'off',
      TENANT_CACHE_MAX: String(Math.max(5000, n + 1)),
      USAGE_COUNTING: 'off',
    };
    // The API (requests) and a worker (drives the runs) in processes of their own, as deployed.
    children.push(await startServer({ ...env, WORKER: 'off', PORT: String(API_PORT) }));
    master = openMasterDb(url, 4);
    const actor = { userId: null, label: 'bench' };
    /** A run to the newest migration of `dir` by a fresh worker process; resolves with it once finished, and its time. */
    const fleetRun = async (dir: string) => {
      const worker = await startServer({
        ...env,
        TENANT_MIGRATIONS_DIR: dir,
        WORKER: 'on',
        PORT: String(API_PORT + 1),
      });
      children.push(worker);
      const config = loadConfig({ ...process.env, ...env, TENANT_MIGRATIONS_DIR: dir });
      await queues?.close();
      queues = new Queues({ config, redisPrefix: env.REDIS_PREFIX });
      // As deployed, the worker is up before the run: its start-up (module loading, its schedulers' first jobs:
      // a storage sample of every store, the day's first backups, the warm pool) is not the run's.
      await startUpDone(queues);
      const deps = { master: master!, queues, config };
      /**
       * A run created and followed to its end; its time is the run's own record, created → finished (the master's
       * clock, the same machine): the bench looks only every 250 ms, so that its looking is not the run's load.
       */
      const timedRun = async () => {
        const { runId } = await createRun(deps, actor, { perServer: opts.perServer });
        for (;;) {
          const run = await getRun(deps, runId);
          if (FINAL_STATES.includes(run.state)) {
            const { createdAt, finishedAt } = await runDetails(deps, runId);
            return { run, ms: Date.parse(finishedAt!) - Date.parse(createdAt!) };
          }
          await new Promise((r) => setTimeout(r, 250));
        }
      };
      const { run, ms } = await timedRun();
      const { run: noop, ms: noopMs } = await timedRun();
      await stopProcess(worker);
      children.splice(children.indexOf(worker), 1);
      return { run, ms, noop, noopMs };
    };
    const load = (duration: number) =>
      new Promise<autocannon.Result>((resolve, reject) => {
        const instance = autocannon(
          {
            url: `http://127.0.0.1:${API_PORT}/api/store/products`,
            connections: opts.connections,
            overallRate: opts.rate,
            duration,
            headers: { 'x-store-id': probe },
          },
          (err, result) => (err ? reject(err) : resolve(result)),
        );
        stopLoad = () => instance.stop();
      });
    let stopLoad = () => {};
    await load(2); // warm-up: the probe's handle built, the JIT warm

    // 2. Tenantry: a fleet run of the same migration, then a no-op run over the up-to-date fleet.
    const compared = await fleetRun(first.dir);
    console.log(
      `Tenantry run: ${compared.run.state}, ${compared.run.migrated} migrated in ${seconds(compared.ms)} s; no-op ${seconds(compared.noopMs)} s`,
    );

    // 3. Requests to a store no run touches: without a run, then during a run of the next migration.
    const quiet = await load(Math.max(3, Math.round(compared.ms / 1000)));
    const duringResult = load(3600);
    const loaded = await fleetRun(second.dir);
    stopLoad();
    const during = await duringResult;

    const errorRate = (r: autocannon.Result) => {
      const total = r.requests.total + r.errors + r.timeouts;
      return `${(((r.errors + r.timeouts + r.non2xx) / Math.max(1, total)) * 100).toFixed(2)} % (${r.non2xx} non-2xx, ${r.errors + r.timeouts} errors of ${total})`;
    };
    const runNote = (r: typeof compared.run) =>
      `${r.state}: ${r.migrated} migrated, ${r.failed} failed, ${r.skipped} skipped`;
    console.log(
      `\n${n} stores, one migration (a column and an index on products), perServer ${opts.perServer}, a worker process`,
    );
    printTable(
      ['scenario', 'time', 'stores/s', 'note'],
      [
        [
          'naive (one after the other)',
          `${seconds(naiveMs)} s`,
          (n / (naiveMs / 1000)).toFixed(0),
          sample < n ? `measured on ${sample} stores, extrapolated to ${n}` : 'all stores',
        ],
        ['Tenantry run', `${seconds(compared.ms)} s`, (n / (compared.ms / 1000)).toFixed(0), runNote(compared.run)],
        ['no-op run (up to date)', `${seconds(compared.noopMs)} s`, '', runNote(compared.noop)],
        [
          'Tenantry run, requests meanwhile',
          `${seconds(loaded.ms)} s`,
          (n / (loaded.ms / 1000)).toFixed(0),
          `the next migration: ${runNote(loaded.run)}`,
        ],
      ],
    );
    console.log(
      `\nrequests to one store no run touches: ${opts.rate} req/s offered over ${opts.connections} connections (GET /api/store/products)`,
    );
    printTable(
      ['store requests', 'req/s', 'p50 ms', 'p99 ms', 'error rate'],
      [
        [
          'during a run',
          Math.round(during.requests.average),
          during.latency.p50,
          during.latency.p99,
          errorRate(during),
        ],
        ['no run', Math.round(quiet.requests.average), quiet.latency.p50, quiet.latency.p99, errorRate(quiet)],
      ],
    );
    console.log(
      `\nnaive / Tenantry = ${(naiveMs / compared.ms).toFixed(1)}× (goal ≥ 5×); Tenantry ${seconds(compared.ms)} s for ${n} (goal < 30 s for 1,000); no-op ${seconds(compared.noopMs)} s (goal < 2 s)`,
    );
  } finally {
    await Promise.all(children.map(stopProcess));
    await queues?.close();
    await master?.sequelize.close();
    await pg.stop();
    for (const dir of [first.dir, second.dir]) rmSync(dir, { recursive: true, force: true });
  }
}
