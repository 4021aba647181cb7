import { createHash, timingSafeEqual } from 'node:crypto';
import type { Job, Worker } from 'bullmq';
import { Router, type RequestHandler } from 'express';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AppContext } from '../app-context';
import { logger } from '../lib/logger';
import { QueueName } from '../queue/queues';
import type { AnsweredRequest } from './request-log';

/**
 * Prometheus metrics of one process (one application context): HTTP answers by route, the connection manager's
 * state, the queues, provisioning and migration outcomes, and Node's own. Every label has a bounded set of
 * values — route patterns, queue names, states, outcomes — and never a store id or a raw path: a platform
 * with a hundred thousand stores has as many series as one with ten.
 */
export interface Metrics {
  registry: Registry;
  /** Called by the request log for every answer. */
  observeRequest(answered: AnsweredRequest): void;
  /** Called by the worker for every job attempt that ends. */
  observeJob(queue: string, job: Job, outcome: JobOutcome, result?: unknown): void;
}

/** How a job attempt ended: done, failed for good, or failed and to be tried again. */
export type JobOutcome = 'completed' | 'failed' | 'retried';

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
/** Job states whose counts are the queue's depth (what waits, runs, or failed and is kept for a look). */
export const QUEUE_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'failed'] as const;
const QUEUE_COUNT_TIMEOUT_MS = 2000;

type TenantStats = ReturnType<AppContext['tenants']['stats']>;

const perContext = new WeakMap<AppContext, Metrics>();

/** The metrics of an application context, made on first use: the app and the in-process worker share them. */
export function metricsOf(ctx: AppContext): Metrics {
  let metrics = perContext.get(ctx);
  if (!metrics) perContext.set(ctx, (metrics = createMetrics(ctx)));
  return metrics;
}

function createMetrics(ctx: AppContext): Metrics {
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry, prefix: 'tenantry_' });

  const requests = new Counter({
    name: 'tenantry_http_requests_total',
    help: 'HTTP requests answered, by method, route pattern and status code',
    labelNames: ['method', 'route', 'status'] as const,
    registers,
  });
  const latency = new Histogram({
    name: 'tenantry_http_request_duration_seconds',
    help: 'Time from a request arriving to its answer being sent, by method, route pattern and status class',
    labelNames: ['method', 'route', 'status_class'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers,
  });

  tenantMetrics(ctx, registers);
  queueDepth(ctx, registers);

  const jobDuration = new Histogram({
    name: 'tenantry_job_duration_seconds',
    help: 'Time a job attempt ran, by queue and outcome (completed, failed for good, retried); counted by the process that ran it',
    labelNames: ['queue', 'outcome'] as const,
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers,
  });
  const provisioning = new Counter({
    name: 'tenantry_provisioning_outcomes_total',
    help: 'Provisioning jobs by outcome: completed (store active), failed (store provisioning_failed), retried, skipped (nothing to do)',
    labelNames: ['outcome'] as const,
    registers,
  });
  const migrations = new Counter({
    name: 'tenantry_tenant_migration_outcomes_total',
    help: 'Store databases visited by migration runs, by outcome: migrated, unchanged (already current), failed',
    labelNames: ['outcome'] as const,
    registers,
  });
  // Every series exists from the start at 0, so that rate() and alerts see the first event.
  for (const queue of Object.values(QueueName))
    for (const outcome of ['completed', 'failed', 'retried'] as const) jobDuration.zero({ queue, outcome });
  for (const outcome of ['completed', 'failed', 'retried', 'skipped']) provisioning.inc({ outcome }, 0);
  for (const outcome of ['migrated', 'unchanged', 'failed']) migrations.inc({ outcome }, 0);

  return {
    registry,
    observeRequest({ method, route, status, seconds }) {
      const m = METHODS.has(method) ? method : 'OTHER';
      requests.inc({ method: m, route, status: String(status) });
      latency.observe({ method: m, route, status_class: `${Math.floor(status / 100)}xx` }, seconds);
    },
    observeJob(queue, job, outcome, result) {
      if (job.processedOn)
        jobDuration.observe({ queue, outcome }, Math.max(0, (job.finishedOn ?? Date.now()) - job.processedOn) / 1000);
      if (queue === QueueName.provisioning) {
        const skipped = outcome === 'completed' && typeof result === 'object' && result !== null && 'skipped' in result;
        provisioning.inc({ outcome: skipped ? 'skipped' : outcome });
      } else if (queue === QueueName.tenantMigrations && outcome === 'completed') {
        const run = result as { done?: number; migrated?: number; failures?: unknown[] } | undefined;
        const failed = run?.failures?.length ?? 0;
        const migrated = run?.migrated ?? 0;
        migrations.inc({ outcome: 'migrated' }, migrated);
        migrations.inc({ outcome: 'failed' }, failed);
        migrations.inc({ outcome: 'unchanged' }, Math.max(0, (run?.done ?? 0) - migrated - failed));
      }
    },
  };
}

/** The connection manager's state, read from stats() at each scrape (its counters become Prometheus counters). */
function tenantMetrics(ctx: AppContext, registers: Registry[]): void {
  const gauge = (name: string, help: string, read: (s: TenantStats) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read(ctx.tenants.stats()));
      },
    });
  const counter = (name: string, help: string, read: (s: TenantStats) => number) =>
    new Counter({
      name,
      help,
      registers,
      collect() {
        // The connection manager keeps the running totals; publish them as they are.
        this.reset();
        this.inc(read(ctx.tenants.stats()));
      },
    });
  gauge(
    'tenantry_tenant_connections_open',
    'Tenant database connections open now, over all stores',
    (s) => s.connections.open,
  );
  gauge(
    'tenantry_tenant_connections_max',
    'Cap on open tenant connections (TENANT_CONNECTIONS_MAX)',
    (s) => s.connections.max,
  );
  gauge(
    'tenantry_tenant_connections_waiting',
    'Requests waiting for a tenant connection slot now',
    (s) => s.connections.waiting,
  );
  counter(
    'tenantry_tenant_connection_waits_total',
    'Requests that had to wait for a tenant connection slot',
    (s) => s.connections.waits,
  );
  counter(
    'tenantry_tenant_connection_wait_timeouts_total',
    'Waits for a tenant connection that timed out (503)',
    (s) => s.connections.waitTimeouts,
  );
  counter(
    'tenantry_tenant_connections_reclaimed_total',
    'Busy connections taken back from a store holding more than its part, for a waiting store',
    (s) => s.connections.reclaimed,
  );
  gauge('tenantry_tenant_handles', 'Tenant handles cached', (s) => s.handles);
  gauge('tenantry_tenant_handles_max', 'Cap on cached tenant handles (TENANT_CACHE_MAX)', (s) => s.handlesMax);
  counter('tenantry_tenant_handle_hits_total', 'Requests served by a cached tenant handle', (s) => s.hits);
  counter('tenantry_tenant_handle_misses_total', 'Requests that found no cached tenant handle', (s) => s.misses);
  counter('tenantry_tenant_handle_builds_total', 'Tenant handles built', (s) => s.builds);
  counter('tenantry_tenant_handle_evictions_total', 'Tenant handles evicted from the cache', (s) => s.evictions);
  gauge(
    'tenantry_tenant_handle_build_avg_seconds',
    'Average time to build a tenant handle',
    (s) => s.avgBuildMs / 1000,
  );
  gauge('tenantry_tenants_fenced', 'Stores whose database is fenced off now (fast 503s)', (s) => s.fenced.length);
  counter('tenantry_tenant_fences_total', 'Times a failing store database was fenced off', (s) => s.fencesTotal);
  serverMetrics(ctx, registers);
  new Counter({
    name: 'tenantry_tenant_host_lookups_total',
    help: 'Hostname to store look-ups, by whether the host cache answered (hit) or the master DB was asked (miss)',
    labelNames: ['result'] as const,
    registers,
    collect() {
      const { hostCache } = ctx.tenants.stats();
      this.reset();
      this.inc({ result: 'hit' }, hostCache.hits);
      this.inc({ result: 'miss' }, hostCache.misses);
    },
  });
}

type ServerStats = TenantStats['servers'][number];

/**
 * Per Postgres server: its budget, the leases (this process's and every process's), what is open, waits and
 * refusals. Managed servers by their `host:port` (a handful, from TENANT_SERVERS); owners' external servers
 * summed under `external`, so that their number (and their names) never reach the labels.
 */
function serverMetrics(ctx: AppContext, registers: Registry[]): void {
  const byLabel = (servers: ServerStats[], read: (s: ServerStats) => number) => {
    const sums = new Map<string, number>();
    for (const s of servers) {
      const label = s.external ? 'external' : s.key;
      sums.set(label, (sums.get(label) ?? 0) + read(s));
    }
    return sums;
  };
  const series = (kind: typeof Gauge | typeof Counter, name: string, help: string, read: (s: ServerStats) => number) =>
    new kind({
      name,
      help,
      labelNames: ['server'] as const,
      registers,
      collect() {
        this.reset();
        for (const [server, value] of byLabel(ctx.tenants.stats().servers, read))
          (this as Gauge).inc({ server }, value);
      },
    });
  series(
    Gauge,
    'tenantry_tenant_server_budget',
    "A server's connection budget, for every process together (max_connections − reserved − headroom; external: EXTERNAL_SERVER_CONNECTIONS)",
    (s) => s.budget,
  );
  series(
    Gauge,
    'tenantry_tenant_server_leased',
    'Connections this process holds a lease for on a server',
    (s) => s.leased,
  );
  series(
    Gauge,
    'tenantry_tenant_server_leased_fleet',
    'Connections leased on a server by every process together (as of the last heartbeat)',
    (s) => s.leasedTotal,
  );
  series(
    Gauge,
    'tenantry_tenant_server_allowance',
    'Connections this process may open on a server now (its lease, or its static share without Redis)',
    (s) => s.allowance,
  );
  series(
    Gauge,
    'tenantry_tenant_server_connections_open',
    'Connections this process has open on a server',
    (s) => s.open,
  );
  series(
    Gauge,
    'tenantry_tenant_server_static_share',
    '1 while the lease of a server cannot be renewed (Redis) and the static share applies',
    (s) => (s.mode === 'static' ? 1 : 0),
  );
  series(
    Counter,
    'tenantry_tenant_server_waits_total',
    'Requests that waited for a connection slot of a server',
    (s) => s.waits,
  );
  series(
    Counter,
    'tenantry_tenant_server_refusals_total',
    'New sessions a server refused as full (53300), retried',
    (s) => s.serverRefusals,
  );
  series(
    Counter,
    'tenantry_tenant_server_busy_total',
    'Requests answered 503 busy for a server (no slot in time, or the server stayed full)',
    (s) => s.busyRefusals,
  );
}

/** Jobs per queue and state, asked of Redis at each scrape (shared by every worker, so any instance can tell). */
function queueDepth(ctx: AppContext, registers: Registry[]): void {
  new Gauge({
    name: 'tenantry_queue_jobs',
    help: `Jobs per queue and state (${QUEUE_STATES.join(', ')})`,
    labelNames: ['queue', 'state'] as const,
    registers,
    async collect() {
      this.reset();
      await Promise.all(
        Object.values(QueueName).map(async (queue) => {
          try {
            // Queue connections retry forever while Redis is away: a scrape must not wait for them.
            const counts = await withTimeout(
              ctx.queues.get(queue).getJobCounts(...QUEUE_STATES),
              QUEUE_COUNT_TIMEOUT_MS,
            );
            for (const state of QUEUE_STATES) this.set({ queue, state }, counts[state] ?? 0);
          } catch (err) {
            logger.warn({ queue, err: (err as Error).message }, 'queue depth not readable; left out of this scrape');
          }
        }),
      );
    },
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Record every job attempt a worker finishes (its duration, and provisioning and migration outcomes). */
export function instrumentWorker(ctx: AppContext, worker: Worker): void {
  const metrics = metricsOf(ctx);
  worker.on('completed', (job, result) => metrics.observeJob(worker.name, job, 'completed', result));
  worker.on('failed', (job) => {
    // BullMQ sets finishedOn only when the job moves to failed for good, not when it will be retried.
    if (job) metrics.observeJob(worker.name, job, job.finishedOn ? 'failed' : 'retried');
  });
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();

/**
 * GET /metrics. With METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` opens it (Prometheus's scrape
 * token, which does not expire); a platform admin's token (`adminOnly`) always does. Without METRICS_TOKEN, only
 * the admin token.
 */
export function metricsRoutes(ctx: AppContext, adminOnly: RequestHandler[]): Router {
  const router = Router();
  const { registry } = metricsOf(ctx);
  const serve: RequestHandler = async (_req, res) => {
    res.type(registry.contentType).send(await registry.metrics());
  };
  const scrapeToken = ctx.config.metricsToken;
  if (scrapeToken) {
    const expected = sha256(scrapeToken);
    router.get(
      '/metrics',
      (req, _res, next) => {
        const sent = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
        // Digests of equal length compared in constant time: the answer's timing tells nothing about the token.
        // Anything else goes on to the admin check ('route' skips to the next /metrics route).
        next(sent !== undefined && timingSafeEqual(sha256(sent), expected) ? undefined : 'route');
      },
      serve,
    );
  }
  router.get('/metrics', ...adminOnly, serve);
  return router;
}
