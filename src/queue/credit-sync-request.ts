import type { AppContext } from '../app-context';
import { logger } from '../lib/logger';
import { creditSyncJobOptions, QueueName } from './queues';

/** A change is already committed when its sync is queued: an unreachable Redis must not hold its answer. */
const QUEUE_WAIT_MS = 1000;

/**
 * Ask for a sync of a store's credit cache (the job is credits/credit-sync.ts's processCreditSync),
 * CREDIT_SYNC_DELAY_MS from now. One job per store at a time: changes while a sync waits are covered by that
 * sync; a change while one runs queues exactly one more (see creditSyncJobOptions).
 * Never throws, and waits for Redis at most a second: the master already holds the change, and the next
 * change (or provisioning) syncs again. Here, below the features, because stores (a restore) asks for one
 * as well as credits.
 */
export async function requestCreditSync(ctx: AppContext, storeId: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const queued = ctx.queues
    .get(QueueName.creditSync)
    .add('sync', { storeId }, creditSyncJobOptions(storeId, ctx.config.creditSyncDelayMs));
  const gaveUp = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), QUEUE_WAIT_MS)));
  try {
    if ((await Promise.race([queued, gaveUp])) === 'timeout') {
      logger.warn({ storeId }, 'queueing a credit cache sync is taking long; answering without waiting for it');
    }
  } catch (err) {
    logger.warn({ storeId, err: (err as Error).message }, 'could not queue a credit cache sync; the next change will');
  } finally {
    clearTimeout(timer);
  }
}
