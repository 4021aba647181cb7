import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { HOSTNAME_CEILING } from '../stores/hostnames.service';
import { requireStoreAccess } from '../stores/membership';
import { planOf } from '../stores/plans';
import { liveRequestCounts, utcDay } from './request-counter';
import { daysBetween, DEFAULT_USAGE_DAYS, MAX_USAGE_DAYS, type UsageDto, type UsageQuery } from './usage.schemas';

/** Request counters Redis still holds (see request-counter.ts): the days a flush may not have caught up with. */
const LIVE_DAYS = 3;
/** Statuses a store counts against its owner's plan with (as creating one checks). */
const LIVE_STORE_STATUSES = ['pending_database', 'provisioning', 'active', 'provisioning_failed', 'suspended'];

const addDays = (day: string, n: number) => utcDay(new Date(Date.parse(`${day}T00:00:00Z`) + n * 86400_000));

function daysOf(from: string, to: string): string[] {
  const days: string[] = [];
  for (let d = from; d <= to; d = addDays(d, 1)) days.push(d);
  return days;
}

/** Credits spent per service per day (usage_metrics, written with each spend). */
async function creditsSpent(ctx: AppContext, storeId: string, from: string, to: string) {
  const rows = await ctx.master.sequelize.query<{ day: string; service: string; quantity: string; credits: string }>(
    `SELECT day::text AS day, service, quantity::text AS quantity, credits::text AS credits
       FROM usage_metrics WHERE store_id = $1::uuid AND day BETWEEN $2::date AND $3::date
      ORDER BY day, service`,
    { bind: [storeId, from, to], type: QueryTypes.SELECT },
  );
  const items = rows.map((r) => ({
    day: r.day,
    service: r.service,
    quantity: Number(r.quantity),
    credits: Number(r.credits),
  }));
  return { total: items.reduce((sum, i) => sum + i.credits, 0), items };
}

/**
 * Requests per day: the flushed counts (api_usage_logs), or the counter still in Redis where it is ahead
 * (today's, until the next flush).
 */
async function requestsMade(ctx: AppContext, storeId: string, from: string, to: string) {
  const rows = await ctx.master.sequelize.query<{ day: string; requests: string }>(
    `SELECT day::text AS day, requests::text AS requests
       FROM api_usage_logs WHERE store_id = $1::uuid AND day BETWEEN $2::date AND $3::date`,
    { bind: [storeId, from, to], type: QueryTypes.SELECT },
  );
  const flushed = new Map(rows.map((r) => [r.day, Number(r.requests)]));
  const days = daysOf(from, to);
  const recent = days.filter((d) => d > addDays(utcDay(), -LIVE_DAYS));
  const live = await liveRequestCounts(ctx, storeId, recent).catch((err: Error) => {
    logger.warn({ storeId, err: err.message }, "usage: Redis's request counters could not be read");
    return new Map<string, number>();
  });
  const items = days.map((day) => ({ day, count: Math.max(flushed.get(day) ?? 0, live.get(day) ?? 0) }));
  return { total: items.reduce((sum, i) => sum + i.count, 0), items };
}

interface TenantFigures {
  products: number;
  staff: number;
  sizeBytes: number;
}

/** Products, staff and the database size, from the store's own database; null when it cannot be asked. */
async function tenantFigures(ctx: AppContext, storeId: string): Promise<TenantFigures | null> {
  try {
    const handle = await ctx.tenants.forStore(storeId);
    const [row] = await ctx.tenants.guard(handle, (handle) =>
      handle.query<{ products: number; staff: number; sizeBytes: string }>(
        `SELECT (SELECT count(*) FROM products WHERE deleted_at IS NULL)::int AS products,
                (SELECT count(*) FROM users WHERE role IN ('admin', 'staff') AND platform_user_id IS NULL)::int AS staff,
                pg_database_size(current_database())::text AS "sizeBytes"`,
      ),
    );
    return { products: row.products, staff: row.staff, sizeBytes: Number(row.sizeBytes) };
  } catch (err) {
    logger.info({ storeId, err: (err as Error).message }, "usage: the store's database could not be asked");
    return null;
  }
}

/** What the master knows of the store: its owner's live stores, custom hostnames, the sampled database size. */
async function masterFigures(ctx: AppContext, storeId: string, ownerId: string) {
  const [row] = await ctx.master.sequelize.query<{
    stores: number;
    hostnames: number;
    storageBytes: string | null;
    storageSampledAt: Date | null;
  }>(
    `SELECT (SELECT count(*) FROM stores WHERE owner_id = $2::uuid AND status = ANY($3::text[]))::int AS stores,
            (SELECT count(*) FROM store_hostnames WHERE store_id = $1::uuid AND kind = 'custom')::int AS hostnames,
            s.storage_bytes::text AS "storageBytes", s.storage_sampled_at AS "storageSampledAt"
       FROM stores s WHERE s.id = $1::uuid`,
    { bind: [storeId, ownerId, LIVE_STORE_STATUSES], type: QueryTypes.SELECT },
  );
  return row;
}

async function storageLimitMb(ctx: AppContext, planId: string): Promise<number | null> {
  const [row] = await ctx.master.sequelize.query<{ mb: number | null }>(
    'SELECT max_storage_mb AS mb FROM plans WHERE id = $1::text',
    { bind: [planId], type: QueryTypes.SELECT },
  );
  return row?.mb ?? null;
}

/** The range asked for, its defaults filled in; checked again here, as a default end may make it wrong. */
function usageRange(query: UsageQuery): { from: string; to: string } {
  const to = query.to ?? utcDay();
  const from = query.from ?? addDays(to, -(DEFAULT_USAGE_DAYS - 1));
  const problem =
    from > to
      ? { path: 'from', message: 'must not be after `to` (default: today)' }
      : daysBetween(from, to) > MAX_USAGE_DAYS
        ? { path: 'from', message: `must be at most ${MAX_USAGE_DAYS} days before \`to\` (default: today)` }
        : null;
  if (problem) throw fail(ErrorCode.VALIDATION_FAILED, 'The request query is not valid', { errors: [problem] });
  return { from, to };
}

/**
 * A store's usage (owner, admin): credits spent, requests made, its database's size, and what it uses
 * against its owner's plan. The database size is the sampled one when there is a sample, else read live.
 */
export async function storeUsage(
  ctx: AppContext,
  userId: string,
  storeId: string,
  query: UsageQuery,
): Promise<UsageDto> {
  const { store } = await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { allowDeleted: true });
  const { from, to } = usageRange(query);
  const plan = await planOf(ctx, store.ownerId);
  const [credits, requests, master, tenant, storageMb] = await Promise.all([
    creditsSpent(ctx, storeId, from, to),
    requestsMade(ctx, storeId, from, to),
    masterFigures(ctx, storeId, store.ownerId),
    store.status === 'active' ? tenantFigures(ctx, storeId) : Promise.resolve(null),
    storageLimitMb(ctx, plan.id),
  ]);
  const sampled = master.storageBytes !== null;
  const sizeBytes = sampled ? Number(master.storageBytes) : (tenant?.sizeBytes ?? null);
  const sampledAt = sampled ? master.storageSampledAt : tenant ? new Date() : null;
  return {
    storeId,
    from,
    to,
    credits,
    requests,
    database: { sizeBytes, sampledAt: sampledAt ? new Date(sampledAt).toISOString() : null },
    plan: { id: plan.id, name: plan.name },
    limits: {
      stores: { used: master.stores, limit: plan.maxStores },
      products: { used: tenant?.products ?? null, limit: plan.maxProducts },
      staff: { used: tenant?.staff ?? null, limit: plan.maxStaff },
      hostnames: { used: master.hostnames, limit: plan.maxHostnames ?? HOSTNAME_CEILING },
      storageMb: { used: sizeBytes === null ? null : Math.ceil(sizeBytes / 1048576), limit: storageMb },
    },
  };
}
