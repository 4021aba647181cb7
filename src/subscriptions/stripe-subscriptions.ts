import { QueryTypes } from 'sequelize';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { logger } from '../lib/logger';
import { requestCreditSync } from '../queue/credit-sync-request';
import { announcePlanChange } from './store-limits';
import { writePlanState, type PlanState } from './subscriptions.service';

/** Stripe's subscription events we act on (the Stripe webhook hands them here once their signature holds). */
export const SUBSCRIPTION_EVENTS = new Set([
  'customer.subscription.created',
  'customer.subscription.updated',
  'customer.subscription.deleted',
]);

/** The metadata keys our checkout sets on the Stripe subscription: the pending change's reference, the plan. */
export const SUBSCRIPTION_REFERENCE_KEY = 'tenantry_reference';
export const SUBSCRIPTION_PLAN_KEY = 'tenantry_plan';

const Metadata = z.record(z.string(), z.string()).nullish();
/** The parts of a Stripe Subscription we read (periods moved into its items in newer API versions). */
const StripeSubscription = z.object({
  id: z.string(),
  object: z.literal('subscription'),
  status: z.string(),
  metadata: Metadata,
  current_period_start: z.number().int().nullish(),
  current_period_end: z.number().int().nullish(),
  items: z
    .object({
      data: z.array(
        z.object({
          current_period_start: z.number().int().nullish(),
          current_period_end: z.number().int().nullish(),
          price: z.object({ lookup_key: z.string().nullish(), metadata: Metadata }).nullish(),
        }),
      ),
    })
    .nullish(),
});

export interface SubscriptionEventAck {
  received: true;
  ignored?: true;
  reason?: string;
}

const ignored = (reason: string): SubscriptionEventAck => ({ received: true, ignored: true, reason });

/** Stripe's subscription status as ours; null: not paid for yet (incomplete), nothing to apply. */
function statusOf(type: string, stripeStatus: string): PlanState['status'] | null {
  if (type === 'customer.subscription.deleted') return 'canceled';
  switch (stripeStatus) {
    case 'active':
    case 'trialing':
      return 'active';
    case 'past_due':
    case 'unpaid':
    case 'paused':
      return 'past_due';
    case 'canceled':
    case 'incomplete_expired':
      return 'canceled';
    default:
      return null;
  }
}

const fromUnix = (s: number | null | undefined) => (s == null ? null : new Date(s * 1000));

/**
 * A signed subscription event: the account's subscription takes the state Stripe reports (plan, status,
 * period), exactly once however often the event is delivered — its id is recorded in the same transaction
 * (a repeat changes nothing), an event older than the last one applied to that subscription is ignored, and
 * the period's included credits are granted once per (account, period). Unknown subscriptions and plans are
 * acknowledged and ignored: Stripe retries every non-2xx answer, and retrying cannot make them known.
 */
export async function handleSubscriptionEvent(
  ctx: AppContext,
  event: { id: string; type: string; created: number; data?: { object?: unknown } },
  requestId: string | null,
): Promise<SubscriptionEventAck> {
  const parsed = StripeSubscription.safeParse(event.data?.object);
  if (!parsed.success) return ignored('the event does not carry a subscription');
  const sub = parsed.data;
  const status = statusOf(event.type, sub.status);
  if (!status) return ignored(`the subscription is ${sub.status}: nothing to apply yet`);
  const item = sub.items?.data[0];
  const reference = sub.metadata?.[SUBSCRIPTION_REFERENCE_KEY] ?? null;
  const statedPlan =
    sub.metadata?.[SUBSCRIPTION_PLAN_KEY] ?? item?.price?.metadata?.[SUBSCRIPTION_PLAN_KEY] ?? item?.price?.lookup_key;
  const eventAt = new Date(event.created * 1000);

  const { master } = ctx;
  const outcome = await master.sequelize.transaction(async (t) => {
    const q = <R extends object>(sql: string, bind: unknown[]) =>
      master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT, transaction: t });
    const [known] = await q<{ userId: string }>(
      `SELECT user_id AS "userId" FROM subscriptions WHERE provider = 'stripe' AND provider_ref = $1::text`,
      [sub.id],
    );
    const [request] = reference
      ? await q<{ userId: string; planId: string; status: string }>(
          `SELECT user_id AS "userId", plan_id AS "planId", status FROM subscription_requests WHERE reference = $1::text`,
          [reference],
        )
      : [];
    const userId = known?.userId ?? request?.userId;
    if (!userId) return ignored('no account has this subscription');

    const [fresh] = await q<{ id: string }>(
      `INSERT INTO stripe_events (id, type) VALUES ($1::text, $2::text) ON CONFLICT (id) DO NOTHING RETURNING id`,
      [event.id, event.type],
    );
    if (!fresh) return ignored('this event was already processed');
    // The account's lock, as every change of its plan and every creation of a store takes it.
    await master.models.User.findByPk(userId, { transaction: t, lock: t.LOCK.UPDATE, rejectOnEmpty: true });
    const { Subscription, Plan } = master.models;
    const own = await Subscription.findOne({
      where: { provider: 'stripe', providerRef: sub.id },
      transaction: t,
      lock: t.LOCK.UPDATE,
    });
    const target =
      own ??
      (await Subscription.findOne({
        where: { userId, status: ['active', 'past_due'] },
        transaction: t,
        lock: t.LOCK.UPDATE,
      }));
    if (own?.lastEventAt && own.lastEventAt > eventAt) return ignored('a newer event of this subscription was applied');
    if (own?.status === 'canceled' && status !== 'canceled') return ignored('this subscription was cancelled');
    if (!target && status === 'canceled') return ignored('the account has no subscription to cancel');
    const planId = statedPlan ?? request?.planId ?? target?.planId;
    if (!planId || !(await Plan.findByPk(planId, { transaction: t })))
      return ignored(`the subscription names no plan of ours (${planId ?? 'none'})`);

    const synced = await writePlanState(
      ctx,
      t,
      userId,
      {
        planId,
        status,
        provider: 'stripe',
        providerRef: sub.id,
        periodStart: fromUnix(sub.current_period_start ?? item?.current_period_start),
        periodEnd: fromUnix(sub.current_period_end ?? item?.current_period_end),
        eventAt,
      },
      { userId: null, requestId },
      target,
    );
    if (reference && request?.status === 'pending')
      await q(
        `UPDATE subscription_requests SET status = 'applied', updated_at = now() WHERE reference = $1::text RETURNING reference`,
        [reference],
      );
    return { ack: { received: true as const }, synced, userId };
  });
  if (!('ack' in outcome)) {
    logger.info(
      { eventId: event.id, subscription: sub.id, reason: outcome.reason },
      'Stripe subscription event ignored',
    );
    return outcome;
  }
  await announcePlanChange(ctx, outcome.userId);
  if (outcome.synced) await requestCreditSync(ctx, outcome.synced);
  return outcome.ack;
}
