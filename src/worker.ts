import { Worker, type Processor } from 'bullmq';
import { config } from './config';
import type { AppContext } from './app-context';
import { createContext } from './context';
import { instrumentWorker } from './http/metrics';
import { logger } from './lib/logger';
import { runProcess } from './lib/process-lifecycle';
import { requestCreditSync } from './queue/credit-sync-request';
import { processMaintenance } from './maintenance';
import { processProvisioning } from './provisioning/provisioning.service';
import { processMigrationRun } from './migrations/migration-runner';
import { processCreditSync } from './credits/credit-sync';
import { processBackupJob } from './backups/backups.service';
import { processMoveJob } from './moves/move-runner';
import { tenantServers } from './db/tenant-servers';
import { backoffStrategy, bullConnection, QueueName, type JobPayloads } from './queue/queues';

export interface Workers {
  close(): Promise<void>;
}

/** Each queue's processor: a plain async function calling services. */
function processors(ctx: AppContext): {
  [N in QueueName]: { processor: Processor<JobPayloads[N]>; concurrency: number };
} {
  return {
    maintenance: { processor: (job) => processMaintenance(ctx, job.data), concurrency: 1 },
    provisioning: {
      processor: (job) => processProvisioning(ctx, job),
      concurrency: ctx.config.provisioning.concurrency,
    },
    // The signal: a shutting-down worker hands the run over (see processMigrationRun).
    'tenant-migrations': { processor: (job, _token, signal) => processMigrationRun(ctx, job, signal), concurrency: 1 },
    'credit-sync': { processor: (job) => processCreditSync(ctx, job.data), concurrency: 4 },
    // Bounded per tenant server inside the processor (BACKUPS_PER_SERVER); this lets servers run side by side.
    backups: {
      processor: (job) => processBackupJob(ctx, job.data),
      concurrency: ctx.config.backups.perServer * tenantServers(ctx).length + 1,
    },
    // Bounded per source server inside the processor (STORE_MOVES_PER_SERVER), servers side by side.
    'store-moves': {
      processor: (job) => processMoveJob(ctx, job.data.moveId),
      concurrency: ctx.config.moves.perServer * tenantServers(ctx).length,
    },
  };
}

/** Start a BullMQ worker on every queue. Several processes may run these at once. */
export async function startWorkers(ctx: AppContext): Promise<Workers> {
  const workers = Object.entries(processors(ctx)).map(([name, { processor, concurrency }]) => {
    const w = new Worker(name, processor as Processor, {
      connection: bullConnection(ctx),
      prefix: `${ctx.redisPrefix}:bull`,
      concurrency,
      // A job whose worker died is handed to another after this long without a lock renewal.
      lockDuration: ctx.config.workerLockMs,
      stalledInterval: Math.max(500, Math.floor(ctx.config.workerLockMs / 2)),
      settings: { backoffStrategy },
    });
    w.on('failed', (job, err) =>
      logger.warn({ queue: name, jobId: job?.id, attempt: job?.attemptsMade, err: err.message }, 'job failed'),
    );
    w.on('error', (err) => logger.error({ queue: name, err: err.message }, 'worker error'));
    // Job durations and outcomes, published on this process's /metrics (when it serves the API too).
    instrumentWorker(ctx, w);
    return w;
  });
  // A store that has just got its database gets its credit cache built (its credits may predate it).
  workers
    .find((w) => w.name === QueueName.provisioning)
    ?.on('completed', (job) => void requestCreditSync(ctx, (job.data as JobPayloads['provisioning']).storeId));
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const maintenance = ctx.queues.get(QueueName.maintenance);
  await maintenance.upsertJobScheduler(
    'prune-revoked-tokens',
    { every: 6 * 3600 * 1000 },
    { name: 'prune-revoked-tokens', data: { task: 'prune-revoked-tokens' } },
  );
  await maintenance.upsertJobScheduler(
    'purge-deleted-stores',
    { every: 6 * 3600 * 1000 },
    { name: 'purge-deleted-stores', data: { task: 'purge-deleted-stores' } },
  );
  // A fleet migration run whose driver is gone (failed for good, or its worker died too often) gets one again.
  await maintenance.upsertJobScheduler(
    'resume-migration-runs',
    { every: 60_000 },
    { name: 'resume-migration-runs', data: { task: 'resume-migration-runs' } },
  );
  // Store requests counted in Redis into api_usage_logs (idempotent: a repeated or cut-off flush counts nothing twice).
  await maintenance.upsertJobScheduler(
    'flush-request-counts',
    { every: 60_000 },
    { name: 'flush-request-counts', data: { task: 'flush-request-counts' } },
  );
  // Each store database's size, against its plan's storage limit (writes are refused from the last sample).
  await maintenance.upsertJobScheduler(
    'sample-storage',
    { every: 5 * 60_000 },
    { name: 'sample-storage', data: { task: 'sample-storage' } },
  );
  // Fleet hygiene: a daily reconcile dry run, its counts on /metrics.
  await maintenance.upsertJobScheduler(
    'reconcile-dry-run',
    { every: 24 * 3600_000 },
    { name: 'reconcile-dry-run', data: { task: 'reconcile-dry-run' } },
  );
  // A daily backup per active store, each at its own time of day (see scheduleDueBackups); expired ones removed.
  await maintenance.upsertJobScheduler(
    'schedule-backups',
    { every: 10 * 60_000 },
    { name: 'schedule-backups', data: { task: 'schedule-backups' } },
  );
  await maintenance.upsertJobScheduler(
    'expire-backups',
    { every: 3600_000 },
    { name: 'expire-backups', data: { task: 'expire-backups' } },
  );
  // Moved stores' old databases dropped after STORE_MOVE_KEEP_HOURS; lost move jobs queued again; drains kept going.
  await maintenance.upsertJobScheduler(
    'tend-store-moves',
    { every: 60_000 },
    { name: 'tend-store-moves', data: { task: 'tend-store-moves' } },
  );
  // Manual subscriptions' next billing period, and included credits an account could not be given yet.
  await maintenance.upsertJobScheduler(
    'settle-subscriptions',
    { every: 3600_000 },
    { name: 'settle-subscriptions', data: { task: 'settle-subscriptions' } },
  );
  // Store database passwords: an unfinished rotation is finished within a minute; those older than
  // TENANT_PASSWORD_ROTATION_DAYS (when set) are rotated a bounded number per run.
  await maintenance.upsertJobScheduler(
    'rotate-store-passwords',
    { every: 60_000 },
    { name: 'rotate-store-passwords', data: { task: 'rotate-store-passwords' } },
  );
  if (ctx.config.provisioning.warmPool > 0 && ctx.config.provisioning.templates) {
    // Claims trigger a refill at once; this also tops the pool up after a restart or a lost job.
    await maintenance.upsertJobScheduler(
      'refill-warm-pool',
      { every: 60_000 },
      { name: 'refill-warm-pool', data: { task: 'refill-warm-pool' } },
    );
  }
  return {
    async close() {
      // Only processors that take a signal hear it (a fleet migration driver stops starting stores).
      for (const w of workers) w.cancelAllJobs('the worker is shutting down');
      await Promise.all(workers.map((w) => w.close()));
    },
  };
}

/** `npm run worker`: a worker process without the API, run as server.ts runs the API. */
function main(): void {
  let ctx: AppContext | undefined;
  let workers: Workers | undefined;
  runProcess({
    async start(stopping) {
      for (const note of config.startupNotes) logger.warn(note);
      ctx = await createContext();
      if (stopping()) return;
      workers = await startWorkers(ctx);
      logger.info('Tenantry worker running');
    },
    async close() {
      if (workers) {
        await workers.close();
        logger.info('queue workers stopped');
      }
      await ctx?.close();
    },
    stoppingMessage: 'shutting down: finishing jobs in flight',
  });
}

if (require.main === module) main();
