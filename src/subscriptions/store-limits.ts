import type { RequestHandler } from 'express';
import { LRUCache } from 'lru-cache';
import { QueryTypes, type Sequelize, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { currentStoreId } from '../db/tenant-context';
import type { EventBus } from '../lib/bus';
import { logger } from '../lib/logger';
import { planLimitReached } from '../stores/plans';

export const MB = 1024 * 1024;

/** What counts against a store's limits, in its own database. */
export const PRODUCT_COUNT_SQL = 'SELECT count(*)::int AS n FROM products WHERE deleted_at IS NULL';
/** Admins and staff; the owner's own account (a mirror of a platform account) is not staff. */
export const STAFF_COUNT_SQL =
  "SELECT count(*)::int AS n FROM users WHERE role IN ('admin', 'staff') AND platform_user_id IS NULL";

/** The limits of a store's plan (its owner's) and its database size as last sampled. */
export interface StoreLimits {
  planName: string;
  products: number | null;
  staff: number | null;
  storageMb: number | null;
  storageBytes: number | null;
}

/**
 * For at most this long. A plan change publishes `plan.changed` once committed: every instance drops that
 * owner's stores at once (see announcePlanChange); a new storage sample is seen within this time.
 */
export const STORE_LIMITS_TTL_MS = 10_000;
/** Keyed by instance and store: instances sharing a process (tests) keep caches of their own, as in production. */
const cache = new LRUCache<string, StoreLimits & { ownerId: string | null }>({ max: 50_000, ttl: STORE_LIMITS_TTL_MS });
const instanceIds = new WeakMap<EventBus, string>();
let lastInstanceId = 0;

/** This instance's prefix of cache keys; the first call subscribes it to plan changes. */
function instanceKey(bus: EventBus): string {
  let id = instanceIds.get(bus);
  if (id) return id;
  instanceIds.set(bus, (id = `${++lastInstanceId}:`));
  const prefix = id;
  const drop = (ownerId?: string) => {
    for (const [key, limits] of cache.entries())
      if (key.startsWith(prefix) && (ownerId === undefined || limits.ownerId === ownerId)) cache.delete(key);
  };
  bus.on('plan.changed', (e) => drop(e.userId));
  // Changes may have been missed while the subscriber was away.
  bus.onReconnect(() => drop());
  return id;
}

/** The limits in force for a store's creations and writes (read from the master, cached briefly). */
export async function limitsOfStore(ctx: AppContext, storeId: string): Promise<StoreLimits> {
  const key = instanceKey(ctx.bus) + storeId;
  const hit = cache.get(key);
  if (hit) return hit;
  const [row] = await ctx.master.sequelize.query<{
    ownerId: string;
    planName: string;
    products: number | null;
    staff: number | null;
    storageMb: number | null;
    storageBytes: string | null;
  }>(
    `SELECT s.owner_id AS "ownerId", p.name AS "planName", p.max_products AS products, p.max_staff AS staff,
            p.max_storage_mb AS "storageMb", s.storage_bytes::text AS "storageBytes"
       FROM stores s
       LEFT JOIN subscriptions sub ON sub.user_id = s.owner_id AND sub.status = 'active'
       JOIN plans p ON p.id = coalesce(sub.plan_id, 'free')
      WHERE s.id = $1::uuid`,
    { bind: [storeId], type: QueryTypes.SELECT },
  );
  // The store was resolved a moment ago: without a row it is being removed, and the free plan's limits hold.
  const limits = row
    ? { ...row, storageBytes: row.storageBytes === null ? null : Number(row.storageBytes) }
    : { ownerId: null, planName: 'Free', products: 0, staff: 0, storageMb: 0, storageBytes: null };
  cache.set(key, limits);
  return limits;
}

/** Drop every cached limit in this process (after a storage sample, or a test's direct write). */
export function forgetStoreLimits(): void {
  cache.clear();
}

/**
 * Tell every instance, this one at once, that an account's plan changed: they drop its stores' cached limits.
 * Call it after the transaction commits (before, another instance could read and cache the old plan again).
 * The change stands if Redis cannot take the message: the other instances then see it within the TTL.
 */
export async function announcePlanChange(ctx: AppContext, userId: string): Promise<void> {
  try {
    await ctx.bus.publish({ type: 'plan.changed', userId });
  } catch (err) {
    logger.warn({ err, userId }, 'Could not announce a plan change; other instances see it within the cache TTL');
  }
}

/** The store's database size in megabytes (rounded up) when it is over its plan's storage limit, else null. */
export function storageOver(limits: StoreLimits): number | null {
  if (limits.storageMb === null || limits.storageBytes === null) return null;
  return limits.storageBytes > limits.storageMb * MB ? Math.ceil(limits.storageBytes / MB) : null;
}

const WRITES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Signing in and out writes nothing that grows the store: its people keep access to it while it is over. */
const NOT_GROWING = /^\/auth\/log(in|out)\/?$/i;

/**
 * For a store's router, below the tenant resolution: a store whose database is over its plan's storageMb
 * (as last sampled) gets 403 PLAN_LIMIT_REACHED for its writes; its reads go on. Reads cost nothing here.
 */
export function refuseWritesOverStorage(ctx: AppContext): RequestHandler {
  return async (req, _res, next) => {
    if (!WRITES.has(req.method) || NOT_GROWING.test(req.path)) return next();
    const limits = await limitsOfStore(ctx, currentStoreId());
    const usedMb = storageOver(limits);
    if (usedMb !== null)
      throw planLimitReached(
        'storageMb',
        limits.storageMb!,
        usedMb,
        `The ${limits.planName} plan allows ${limits.storageMb} MB per store database and this one holds ${usedMb} MB: ` +
          'it can be read but not changed until it is smaller or the plan is upgraded',
      );
    next();
  };
}

/** Keys of transaction-scoped advisory locks in a store's own database (one database per store). */
const LOCK_KEYS = { products: 7_301_001, staff: 7_301_002 } as const;
const COUNT_SQL = { products: PRODUCT_COUNT_SQL, staff: STAFF_COUNT_SQL } as const;
const WHAT = { products: 'product(s)', staff: 'admin or staff account(s)' } as const;

/**
 * Refuse one more product or staff account beyond the plan's limit (403 PLAN_LIMIT_REACHED), inside the
 * creating transaction of the store's database: the count is taken under an advisory lock held until that
 * transaction ends, so concurrent creations are counted one after the other and cannot pass the limit together.
 */
export async function requireRoomInStore(
  sequelize: Sequelize,
  t: Transaction,
  resource: 'products' | 'staff',
  limits: StoreLimits,
): Promise<void> {
  const limit = limits[resource];
  if (limit === null) return;
  await sequelize.query('SELECT pg_advisory_xact_lock($1::bigint)', { bind: [LOCK_KEYS[resource]], transaction: t });
  const [{ n }] = await sequelize.query<{ n: number }>(COUNT_SQL[resource], {
    type: QueryTypes.SELECT,
    transaction: t,
  });
  if (n >= limit)
    throw planLimitReached(
      resource,
      limit,
      n,
      `The ${limits.planName} plan allows ${limit} ${WHAT[resource]} per store; remove one or upgrade`,
    );
}
