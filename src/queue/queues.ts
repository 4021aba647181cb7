import { Queue, type BackoffStrategy, type DefaultJobOptions, type JobsOptions, type QueueOptions } from 'bullmq';
import type { Config } from '../config';

/** Every queue of Tenantry and the payload of its jobs. */
export const QueueName = {
  maintenance: 'maintenance',
  provisioning: 'provisioning',
  tenantMigrations: 'tenant-migrations',
  creditSync: 'credit-sync',
  backups: 'backups',
  storeMoves: 'store-moves',
} as const;
export type QueueName = (typeof QueueName)[keyof typeof QueueName];

export interface JobPayloads {
  maintenance: {
    task:
      | 'prune-revoked-tokens'
      | 'refill-warm-pool'
      | 'purge-deleted-stores'
      | 'resume-migration-runs'
      | 'sample-storage'
      | 'settle-subscriptions'
      | 'flush-request-counts'
      | 'rotate-store-passwords'
      | 'reconcile-dry-run'
      | 'schedule-backups'
      | 'expire-backups'
      | 'tend-store-moves';
  };
  provisioning: { storeId: string };
  /** Drive one fleet migration run from its rows in the master DB (see src/migrations). */
  'tenant-migrations': { runId: string };
  'credit-sync': { storeId: string };
  /** A store backup or restore (src/backups), by its row in store_backups / store_restores. */
  backups: { kind: 'backup' | 'restore'; id: string };
  /** Move one store's database to another tenant server (src/moves), by its row in store_moves. */
  'store-moves': { moveId: string };
}

/** One provisioning job per store: a second request finds the same job. */
export const provisioningJobId = (storeId: string) => `provision-${storeId}`;

/**
 * The job that drives a fleet migration run: one per run at a time (deduplication, so two drivers never run
 * side by side), `keepLastIfActive` so that a resume while the previous driver winds down gets a driver after
 * it. Retried when it throws (the master DB away); a driver whose worker died is handed over as a stalled job,
 * and the maintenance sweep re-enqueues an active run left without one.
 */
export const migrationRunJobOptions = (runId: string): JobsOptions => ({
  deduplication: { id: `migration-run-${runId}`, keepLastIfActive: true },
  attempts: 10,
  backoff: { type: BackoffType.cappedExponential, delay: 1000 },
  removeOnComplete: { age: 24 * 3600, count: 1000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 1000 },
});

/** Back-off types beyond BullMQ's own: `capped-exponential` doubles `delay` per attempt up to one minute. */
export const BackoffType = { cappedExponential: 'capped-exponential' } as const;
const BACKOFF_CAP_MS = 60_000;

/** Every worker's `settings.backoffStrategy` (BullMQ asks it only for types it does not know itself). */
export const backoffStrategy: BackoffStrategy = (attemptsMade, type, _err, job) => {
  if (type !== BackoffType.cappedExponential) throw new Error(`unknown back-off type "${type}"`);
  const backoff = job?.opts.backoff;
  const base = typeof backoff === 'object' && backoff.delay ? backoff.delay : 1000;
  return Math.min(base * 2 ** Math.max(0, attemptsMade - 1), BACKOFF_CAP_MS);
};

/**
 * One credit-cache sync per store at a time (BullMQ deduplication, not a fixed job id, which a finished job
 * would keep blocking). The job waits `delayMs` first: adds while it waits are dropped (it will copy their
 * changes), an add while it runs queues exactly one more; so a busy store is synced about once per delay.
 * Retried for about 25 minutes (1 s doubling to 1 min) while the store's database is unreachable.
 */
export const creditSyncJobOptions = (storeId: string, delayMs: number): JobsOptions => ({
  deduplication: { id: `credit-sync-${storeId}`, keepLastIfActive: true },
  delay: delayMs,
  attempts: 30,
  backoff: { type: BackoffType.cappedExponential, delay: 1000 },
  removeOnComplete: { age: 3600, count: 1000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 1000 },
});

/**
 * The warm pool's refill, once a burst of new stores is over: every claim pushes the one pending refill
 * `delayMs` further (deduplication with reschedule), so copying databases does not compete with the stores
 * being provisioned. The worker's minutely scheduler tops the pool up as well.
 */
export const warmPoolRefillJobOptions = (delayMs: number): JobsOptions => ({
  deduplication: { id: 'refill-warm-pool', reschedule: true, keepLastIfActive: true },
  delay: delayMs,
  removeOnComplete: true,
  removeOnFail: true,
});

/** Default job options, in one place: retried with exponential back-off, finished jobs kept a while. */
export const defaultJobOptions: DefaultJobOptions = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 24 * 3600, count: 1000 },
  removeOnFail: { age: 7 * 24 * 3600 },
};

/** What queue and worker options are made from (an AppContext has both). */
type QueueSettings = { config: Config; redisPrefix: string };

/** BullMQ owns (and closes) connections made from these options. */
export function bullConnection(ctx: { config: Config }) {
  return { url: ctx.config.redisUrl, maxRetriesPerRequest: null };
}

export function queueOptions(ctx: QueueSettings): QueueOptions {
  return { connection: bullConnection(ctx), prefix: `${ctx.redisPrefix}:bull`, defaultJobOptions };
}

/** The process's producer handles of the queues (one per name, opened on first use), held by the context. */
export class Queues {
  private readonly byName = new Map<QueueName, Queue>();

  constructor(private readonly settings: QueueSettings) {}

  get<N extends QueueName>(name: N): Queue<JobPayloads[N]> {
    let q = this.byName.get(name);
    if (!q) this.byName.set(name, (q = new Queue(name, queueOptions(this.settings))));
    return q as Queue<JobPayloads[N]>;
  }

  async close(): Promise<void> {
    const queues = [...this.byName.values()];
    this.byName.clear();
    await Promise.all(queues.map((q) => q.close()));
  }
}
