/**
 * Provisioning benchmark: 50 managed stores connected at once through the API, each timed from the
 * connect request to the store being active. Batches side by side: created empty then migrated
 * (TENANT_TEMPLATES=off, the baseline), copied from the template, and taken from a warm pool; and, with
 * `--provision-batches warm-worker`, the warm pool with the worker in its own process. Each batch also
 * prints where its jobs' time went (queued, then each step), from the jobs' results.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Queue } from 'bullmq';
import { runMigrations } from '../src/db/migrate';
import { withClient } from '../src/db/pg-client';
import { ident } from '../src/db/tenant-server-admin';
import { admin, cpuSeconds, databaseUrl, startServer, stopProcess } from './common';
import { PORT } from './routing';

const PREFIX = 'tenantry_bench_p';
const port = PORT + 1;
const base = `http://127.0.0.1:${port}`;

/** A JSON call to the bench server; answers are loosely typed here. */
async function api(path: string, init: { method?: string; token?: string; body?: unknown } = {}): Promise<any> {
  const res = await fetch(base + path, {
    method: init.method ?? 'GET',
    headers: { 'content-type': 'application/json', ...(init.token ? { authorization: `Bearer ${init.token}` } : {}) },
    body: init.body ? JSON.stringify(init.body) : undefined,
  });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${path} → ${res.status} ${JSON.stringify(body)}`);
  return body;
}

/** Medians over the measured stores' jobs: time queued, then each step the job reports (its result's `steps`). */
async function jobTimings(redisPrefix: string, storeIds: string[]): Promise<Record<string, number>> {
  const queue = new Queue('provisioning', {
    connection: { url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    prefix: `${redisPrefix}:bull`,
  });
  try {
    const jobs = await Promise.all(storeIds.map((id) => queue.getJob(`provision-${id}`)));
    const series = new Map<string, number[]>();
    const add = (name: string, ms: number) => series.set(name, [...(series.get(name) ?? []), ms]);
    for (const job of jobs) {
      if (!job?.processedOn) continue;
      add('queued', job.processedOn - job.timestamp);
      for (const [step, ms] of Object.entries((job.returnvalue?.steps ?? {}) as Record<string, number>)) add(step, ms);
    }
    return Object.fromEntries(
      [...series].map(([name, v]) => [
        name,
        Math.round(
          pct(
            v.sort((a, b) => a - b),
            50,
          ),
        ),
      ]),
    );
  } finally {
    await queue.close();
  }
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

async function batch(label: string, stores: number, templates: boolean, warmPool = 0, workerProcesses = 0) {
  const master = `${PREFIX}_master`;
  await admin(`DROP DATABASE IF EXISTS ${master} WITH (FORCE)`);
  await admin(`CREATE DATABASE ${master}`);
  const masterUrl = databaseUrl(master);
  await runMigrations('master', { connectionString: masterUrl });
  const redisPrefix = `bench:${randomBytes(4).toString('hex')}`;
  const env = {
    NODE_ENV: 'development',
    PORT: String(port),
    DATABASE_URL: masterUrl,
    WORKER: workerProcesses ? 'off' : 'on',
    LOG_LEVEL: 'warn',
    JWT_SECRET: randomBytes(32).toString('hex'),
    ENCRYPTION_KEYS: `bench:${randomBytes(32).toString('base64')}`,
    TENANT_DB_PREFIX: `${PREFIX}_db_`,
    TENANT_TEMPLATES: templates ? 'on' : 'off',
    TENANT_WARM_POOL: String(warmPool),
    REDIS_PREFIX: redisPrefix,
  };
  const server = await startServer(env);
  // `npm run worker` processes beside the API, as a deployment would run them.
  const workers = Array.from({ length: workerProcesses }, () =>
    fork(path.join(__dirname, '../src/worker.ts'), [], {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, ...env },
      stdio: 'inherit',
    }),
  );
  try {
    const { token, user } = await api('/api/auth/register', {
      method: 'POST',
      body: { email: 'owner@bench.test', password: 'bench-password-1', name: 'Bench' },
    });
    await withClient(masterUrl, (c) =>
      c.query(`INSERT INTO subscriptions (user_id, plan_id) VALUES ($1, 'agency')`, [user.id]),
    );
    const ids: string[] = [];
    for (let i = 0; i <= stores; i++)
      ids.push(
        (await api('/api/stores', { method: 'POST', token, body: { name: `Bench ${i}`, slug: `bench-p-${i}` } })).id,
      );
    const active = async (storeIds: string[]) =>
      withClient(masterUrl, async (c) => {
        const done = new Map<string, number>();
        const deadline = Date.now() + 180_000;
        while (done.size < storeIds.length) {
          if (Date.now() > deadline)
            throw new Error(`only ${done.size} of ${storeIds.length} stores became active within 180 s`);
          const { rows } = await c.query(`SELECT id, status FROM stores WHERE id = ANY($1)`, [storeIds]);
          for (const r of rows) {
            if (r.status === 'provisioning_failed') throw new Error(`store ${r.id} failed to provision`);
            if (r.status === 'active' && !done.has(r.id)) done.set(r.id, performance.now());
          }
          await new Promise((r) => setTimeout(r, 5));
        }
        return done;
      });
    if (warmPool) {
      // Let the worker fill the pool before the clock starts: that is its steady state.
      const deadline = Date.now() + 300_000;
      for (;;) {
        const { rows } = await admin(
          `SELECT count(*)::int AS n FROM pg_database WHERE starts_with(datname, '${PREFIX}_db_pool_')`,
        );
        if (rows[0].n >= warmPool) break;
        if (Date.now() > deadline) throw new Error('the warm pool did not fill');
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    // Warm-up: the first store also builds the template (when on), which is done once per schema.
    const warm = performance.now();
    await api(`/api/stores/${ids[0]}/database`, { method: 'POST', token, body: { mode: 'managed' } });
    await active([ids[0]]);
    const warmMs = performance.now() - warm;

    const measured = ids.slice(1);
    const startedAt = new Map<string, number>();
    const answered: number[] = [];
    const nodePids = [server, ...workers].map((p) => p.pid!);
    const cpuBefore = cpuSeconds(nodePids);
    const t0 = performance.now();
    const finished = active(measured);
    await Promise.all(
      measured.map(async (id) => {
        const sent = performance.now();
        startedAt.set(id, sent);
        await api(`/api/stores/${id}/database`, { method: 'POST', token, body: { mode: 'managed' } });
        answered.push(performance.now() - sent);
      }),
    );
    answered.sort((a, b) => a - b);
    const done = await finished;
    const total = performance.now() - t0;
    const cpuAfter = cpuSeconds(nodePids);
    const cpu =
      cpuBefore && cpuAfter
        ? (['postgres', 'node', 'redis'] as const)
            .map((k) => `${k} ${(cpuAfter[k] - cpuBefore[k]).toFixed(2)} s`)
            .join(', ')
        : 'not measured';
    const times = measured.map((id) => done.get(id)! - startedAt.get(id)!).sort((a, b) => a - b);
    return {
      label,
      warmMs: Math.round(warmMs),
      accepted50: Math.round(pct(answered, 50)),
      p50: Math.round(pct(times, 50)),
      p95: Math.round(pct(times, 95)),
      max: Math.round(times[times.length - 1]),
      totalMs: Math.round(total),
      jobs: await jobTimings(redisPrefix, measured),
      cpu,
    };
  } finally {
    await Promise.all([server, ...workers].map(stopProcess));
    const { rows } = await admin(`SELECT datname FROM pg_database WHERE datname LIKE '${PREFIX}_db_%'`);
    for (const { datname } of rows) {
      await admin(`DROP DATABASE IF EXISTS ${ident(datname)} WITH (FORCE)`);
      await admin(`DROP ROLE IF EXISTS ${ident(datname)}`);
    }
  }
}

const BATCHES = {
  baseline: (stores: number) => batch('empty + migrations (TENANT_TEMPLATES=off, baseline)', stores, false),
  template: (stores: number) => batch('copied from the template (TENANT_WARM_POOL=0)', stores, true),
  warm: (stores: number) =>
    batch(`taken from a warm pool of ${stores + 10} (TENANT_WARM_POOL=${stores + 10})`, stores, true, stores + 10),
  'warm-worker': (stores: number) =>
    batch(`warm pool, the worker in its own process (npm run worker)`, stores, true, stores + 10, 1),
};

export async function provisioningBenchmark(opts: { stores: number; batches?: string[] }) {
  const names = (opts.batches ?? ['baseline', 'template', 'warm']) as (keyof typeof BATCHES)[];
  const results = new Map<string, Awaited<ReturnType<typeof batch>>>();
  for (const name of names) results.set(name, await BATCHES[name](opts.stores));
  console.log(`${opts.stores} managed stores connected at once; connect request → store active, in ms:`);
  console.log('| databases made | one store alone | 202 answered, p50 | active, p50 | p95 | max | all active |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of results.values())
    console.log(`| ${r.label} | ${r.warmMs} | ${r.accepted50} | ${r.p50} | ${r.p95} | ${r.max} | ${r.totalMs} |`);
  const plain = results.get('baseline');
  const ratios = (['template', 'warm'] as const)
    .filter((n) => plain && results.has(n))
    .map((n) => `${n} / baseline = ${(results.get(n)!.p50 / plain!.p50).toFixed(2)}`);
  const p50s = (['template', 'warm'] as const)
    .filter((n) => results.has(n))
    .map((n) => `${n} ${results.get(n)!.p50} ms`);
  console.log(`\np50 ${ratios.join(', ')} (target p50 < 300 ms: ${p50s.join(', ')})`);
  console.log("\nwhere a job's time goes (medians, ms):");
  for (const r of results.values())
    console.log(
      `  ${r.label}: ${Object.entries(r.jobs)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
  console.log(
    `\nCPU used from the first connect request until all were active (two cores: at most ${'2 × wall time'}):`,
  );
  for (const r of results.values()) console.log(`  ${r.label}: ${r.cpu}, wall ${(r.totalMs / 1000).toFixed(2)} s`);
}
