import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';

/**
 * API requests per store and UTC day, counted in Redis on the hot path and copied into the master DB by the
 * worker. A store request costs one pipelined `INCR` + `EXPIRE` (no master-DB write, nothing awaited by the
 * request); every key holds the absolute count of its store and day across all instances, and the flush
 * stores that count with `GREATEST`, so a flush repeated, or cut off by a dying worker and run again, neither
 * loses nor double-counts anything.
 *
 * What a lost Redis loses: the requests counted since the last flush; the rest of that day then counts in the
 * database only once the new counter passes the flushed number.
 */

/** Keys live well past their day, so the flushes after midnight (or after a worker's outage) still see them. */
export const REQUEST_COUNTER_TTL_SECONDS = 3 * 86400;
/** Keys read per round trip of a flush. */
const FLUSH_BATCH = 500;

export const utcDay = (at: Date = new Date()): string => at.toISOString().slice(0, 10);

const keyPrefix = (redisPrefix: string) => `${redisPrefix}:usage:requests:`;

export const requestCounterKey = (redisPrefix: string, storeId: string, day: string): string =>
  `${keyPrefix(redisPrefix)}${storeId}:${day}`;

const KEY_TAIL = /^([0-9a-f-]{36}):(\d{4}-\d{2}-\d{2})$/;

/**
 * Count one request of `storeId` (unless USAGE_COUNTING=off): a Map update in this process; its counts are
 * added to Redis once a second (ctx.requestCounts, one pipeline for all stores), so the request neither waits
 * for Redis nor sends it a command.
 */
export function countStoreRequest(ctx: AppContext, storeId: string): void {
  if (!ctx.config.usageCounting) return;
  ctx.requestCounts.add(requestCounterKey(ctx.redisPrefix, storeId, utcDay()));
}

/** The live counts of one store for these days (those Redis still holds), by day. */
export async function liveRequestCounts(
  ctx: AppContext,
  storeId: string,
  days: string[],
): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  if (!days.length) return counts;
  await ctx.requestCounts.flush();
  const values = await ctx.redis.mget(days.map((day) => requestCounterKey(ctx.redisPrefix, storeId, day)));
  values.forEach((v, i) => {
    if (v !== null) counts.set(days[i], Number(v));
  });
  return counts;
}

/**
 * Copy every counter Redis holds into api_usage_logs (one row per store and day, the larger of the two
 * counts kept). Idempotent; safe beside another flush. Counters of stores the master does not know are skipped.
 */
export async function flushRequestCounts(ctx: AppContext): Promise<{ counters: number; rows: number }> {
  // This process's counts first (another instance's reach Redis within a second of theirs).
  await ctx.requestCounts.flush();
  const prefix = keyPrefix(ctx.redisPrefix);
  let counters = 0;
  let rows = 0;
  let cursor = '0';
  do {
    const [next, keys] = await ctx.redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', FLUSH_BATCH);
    cursor = next;
    if (!keys.length) continue;
    const values = await ctx.redis.mget(keys);
    // SCAN may return a key twice; one statement may touch a row once.
    const batch = new Map<string, { storeId: string; day: string; requests: string }>();
    keys.forEach((key, i) => {
      const m = KEY_TAIL.exec(key.slice(prefix.length));
      const value = values[i];
      if (m && value !== null && /^\d+$/.test(value)) batch.set(key, { storeId: m[1], day: m[2], requests: value });
    });
    if (!batch.size) continue;
    const counts = [...batch.values()];
    counters += counts.length;
    const written = await ctx.master.sequelize.query(
      `INSERT INTO api_usage_logs AS l (store_id, day, requests)
       SELECT c.store_id, c.day, c.requests
         FROM unnest($1::uuid[], $2::date[], $3::bigint[]) AS c (store_id, day, requests)
         JOIN stores s ON s.id = c.store_id
       ON CONFLICT (store_id, day) DO UPDATE SET requests = EXCLUDED.requests, updated_at = now()
        WHERE l.requests < EXCLUDED.requests
       RETURNING 1`,
      {
        bind: [counts.map((c) => c.storeId), counts.map((c) => c.day), counts.map((c) => c.requests)],
        type: QueryTypes.SELECT,
      },
    );
    rows += written.length;
  } while (cursor !== '0');
  return { counters, rows };
}
