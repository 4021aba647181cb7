import type { Transaction } from 'sequelize';
import type { AppContext } from '../app-context';

/** The plan a user's stores count against: a live subscription's, else `free`. */
export async function planOf(ctx: AppContext, userId: string, transaction?: Transaction) {
  const sub = await ctx.master.models.Subscription.findOne({
    where: { userId, status: ['active', 'past_due'] },
    transaction,
  });
  return ctx.master.models.Plan.findByPk(sub?.planId ?? 'free', { rejectOnEmpty: true, transaction });
}
