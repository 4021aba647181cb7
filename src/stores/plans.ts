import type { Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { ErrorCode, fail } from '../lib/errors';

/** What a plan limits; `storageMb` is each store's database size, the others are counts. */
export type LimitedResource = 'stores' | 'products' | 'staff' | 'hostnames' | 'storageMb';

/**
 * The plan a user's stores count against: an active subscription's, else `free`. A past-due or cancelled
 * subscription falls back to the free plan's limits (nothing is deleted: only what is created is refused).
 */
export async function planOf(ctx: AppContext, userId: string, transaction?: Transaction) {
  const sub = await ctx.master.models.Subscription.findOne({
    where: { userId, status: 'active' },
    transaction,
  });
  return ctx.master.models.Plan.findByPk(sub?.planId ?? 'free', { rejectOnEmpty: true, transaction });
}

/** 403 PLAN_LIMIT_REACHED, with what is limited, the plan's limit and the count now in the problem. */
export function planLimitReached(resource: LimitedResource, limit: number, count: number, detail: string) {
  return fail(ErrorCode.PLAN_LIMIT_REACHED, detail, { members: { resource, limit, count } });
}
