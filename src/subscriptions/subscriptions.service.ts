import { randomBytes } from 'node:crypto';
import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { applyChange, type LedgerActor } from '../credits/ledger';
import { audit } from '../db/audit';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { Semaphore } from '../lib/semaphore';
import type { MasterModels } from '../models/master';
import { requestCreditSync } from '../queue/credit-sync-request';
import { planOf, type LimitedResource } from '../stores/plans';
import { announcePlanChange, MB, STAFF_COUNT_SQL, PRODUCT_COUNT_SQL } from './store-limits';
import type { ChangePlanInput, PlanDto, SubscriptionDto, SubscriptionUsage } from './subscriptions.schemas';

type Plan = InstanceType<MasterModels['Plan']>;
type Subscription = InstanceType<MasterModels['Subscription']>;

/** Stores' databases an account's usage is counted in at once. */
const TENANT_COUNT_CONCURRENCY = 4;

/** The stores that count against the stores limit (as stores.service counts them). */
const LIVE_STORE_STATUSES = ['pending_database', 'provisioning', 'active', 'provisioning_failed', 'suspended'];

export function toPlanDto(p: Plan): PlanDto {
  return {
    id: p.id,
    name: p.name,
    limits: {
      stores: p.maxStores,
      products: p.maxProducts,
      staff: p.maxStaff,
      hostnames: p.maxHostnames,
      storageMb: p.maxStorageMb,
    },
    monthlyPriceCents: p.monthlyPriceCents,
    includedCredits: p.includedCredits,
  };
}

export async function listPlans(ctx: AppContext) {
  const plans = await ctx.master.models.Plan.findAll({
    order: [
      ['monthlyPriceCents', 'ASC'],
      ['id', 'ASC'],
    ],
  });
  return { items: plans.map(toPlanDto) };
}

/** The subscription that is not cancelled (one at most: a unique index), locked when `t.LOCK` is asked. */
function liveSubscription(ctx: AppContext, userId: string, t?: Transaction, lock = false) {
  return ctx.master.models.Subscription.findOne({
    where: { userId, status: ['active', 'past_due'] },
    transaction: t,
    ...(lock && t ? { lock: t.LOCK.UPDATE } : {}),
  });
}

/** Per store: what it holds of each limited resource. */
interface StoreUsage {
  storeId: string;
  products: number;
  staff: number;
  hostnames: number;
  storageMb: number;
}

/**
 * What an account uses: its live stores, and per store its custom hostnames and database size (master) and
 * its products and staff (its own database, for active stores). A store whose database does not answer is
 * left out of the tenant counts (logged): nothing is deleted by a plan change, so a missed count costs nothing.
 */
async function usageOf(ctx: AppContext, userId: string, t?: Transaction) {
  const stores = await ctx.master.sequelize.query<{ id: string; status: string; storageBytes: string | null }>(
    `SELECT id, status, storage_bytes::text AS "storageBytes" FROM stores
      WHERE owner_id = $1::uuid AND status = ANY($2::text[]) ORDER BY created_at, id`,
    { bind: [userId, LIVE_STORE_STATUSES], type: QueryTypes.SELECT, transaction: t },
  );
  const hostnames = await ctx.master.sequelize.query<{ storeId: string; n: number }>(
    `SELECT store_id AS "storeId", count(*)::int AS n FROM store_hostnames
      WHERE kind = 'custom' AND store_id = ANY($1::uuid[]) GROUP BY store_id`,
    { bind: [stores.map((s) => s.id)], type: QueryTypes.SELECT, transaction: t },
  );
  const hostnamesOf = new Map(hostnames.map((h) => [h.storeId, h.n]));
  // An agency's hundred stores are counted a few at a time, not with a hundred connections at once.
  const counting = new Semaphore(TENANT_COUNT_CONCURRENCY, stores.length);
  const perStore: StoreUsage[] = await Promise.all(
    stores.map(async (s) => {
      const counts =
        s.status === 'active' ? await counting.run(() => tenantCounts(ctx, s.id)) : { products: 0, staff: 0 };
      return {
        storeId: s.id,
        ...counts,
        hostnames: hostnamesOf.get(s.id) ?? 0,
        storageMb: s.storageBytes === null ? 0 : Math.ceil(Number(s.storageBytes) / MB),
      };
    }),
  );
  return { stores: stores.length, perStore };
}

async function tenantCounts(ctx: AppContext, storeId: string): Promise<{ products: number; staff: number }> {
  try {
    const handle = await ctx.tenants.forStore(storeId);
    return await ctx.tenants.guard(handle, async (handle) => {
      const [p] = await handle.query<{ n: number }>(PRODUCT_COUNT_SQL);
      const [s] = await handle.query<{ n: number }>(STAFF_COUNT_SQL);
      return { products: p.n, staff: s.n };
    });
  } catch (err) {
    logger.warn({ err, storeId }, 'Could not count the products and staff of a store; left out of its usage');
    return { products: 0, staff: 0 };
  }
}

function summarise(usage: Awaited<ReturnType<typeof usageOf>>): SubscriptionUsage {
  const max = (k: Exclude<LimitedResource, 'stores'>) => Math.max(0, ...usage.perStore.map((s) => s[k]));
  return {
    stores: usage.stores,
    products: max('products'),
    staff: max('staff'),
    hostnames: max('hostnames'),
    storageMb: max('storageMb'),
  };
}

export interface Overage {
  resource: LimitedResource;
  limit: number;
  count: number;
  storeId: string | null;
}

/** Every limit of `plan` that current usage is over (a store at its limit is not over it). */
function overages(plan: Plan, usage: Awaited<ReturnType<typeof usageOf>>): Overage[] {
  const over: Overage[] = [];
  if (usage.stores > plan.maxStores)
    over.push({ resource: 'stores', limit: plan.maxStores, count: usage.stores, storeId: null });
  const perStore: [Exclude<LimitedResource, 'stores'>, number | null][] = [
    ['products', plan.maxProducts],
    ['staff', plan.maxStaff],
    ['hostnames', plan.maxHostnames],
    ['storageMb', plan.maxStorageMb],
  ];
  for (const s of usage.perStore)
    for (const [resource, limit] of perStore)
      if (limit !== null && s[resource] > limit) over.push({ resource, limit, count: s[resource], storeId: s.storeId });
  return over;
}

function refuseOverages(plan: Plan, over: Overage[]) {
  if (!over.length) return;
  const what = over.map((o) => `${o.resource} ${o.count} > ${o.limit}`).join(', ');
  throw fail(ErrorCode.PLAN_LIMIT_EXCEEDED, `Current usage is over the ${plan.name} plan's limits (${what})`, {
    members: { over },
  });
}

async function pendingRequest(ctx: AppContext, userId: string) {
  const [row] = await ctx.master.sequelize.query<{ planId: string; reference: string; createdAt: Date }>(
    `SELECT plan_id AS "planId", reference, created_at AS "createdAt" FROM subscription_requests
      WHERE user_id = $1::uuid AND status = 'pending'`,
    { bind: [userId], type: QueryTypes.SELECT },
  );
  return row ?? null;
}

/** GET /api/subscription: the plan in force, the subscription's state, a pending change, and usage. */
export async function getSubscription(ctx: AppContext, userId: string): Promise<SubscriptionDto> {
  const [plan, live, latest, pending, usage] = await Promise.all([
    planOf(ctx, userId),
    liveSubscription(ctx, userId),
    ctx.master.models.Subscription.findOne({ where: { userId }, order: [['updatedAt', 'DESC']] }),
    pendingRequest(ctx, userId),
    usageOf(ctx, userId),
  ]);
  const sub = live ?? latest;
  return {
    plan: toPlanDto(plan),
    status: sub?.status ?? 'active',
    subscribedPlanId: live?.planId ?? 'free',
    provider: sub?.provider ?? null,
    currentPeriodEnd: live?.currentPeriodEnd?.toISOString() ?? null,
    pending: pending
      ? { planId: pending.planId, reference: pending.reference, requestedAt: new Date(pending.createdAt).toISOString() }
      : null,
    usage: summarise(usage),
  };
}

async function requirePlan(ctx: AppContext, planId: string, t: Transaction) {
  const plan = await ctx.master.models.Plan.findByPk(planId, { transaction: t });
  if (!plan) throw fail(ErrorCode.NOT_FOUND, 'No such plan');
  return plan;
}

/** Lock the account's row: every change of its plan, and every creation of a store, waits for the other. */
async function lockUser(ctx: AppContext, userId: string, t: Transaction) {
  const user = await ctx.master.models.User.findByPk(userId, { transaction: t, lock: t.LOCK.UPDATE });
  if (!user) throw fail(ErrorCode.NOT_FOUND, 'No such user');
  return user;
}

export interface PlanState {
  planId: string;
  status: 'active' | 'past_due' | 'canceled';
  provider: 'manual' | 'stripe';
  providerRef?: string | null;
  periodStart: Date | null;
  periodEnd: Date | null;
  /** The provider's event time, when a webhook sets the state. */
  eventAt?: Date | null;
}

/**
 * Write an account's subscription as `next` says, under the account's lock (the caller holds it), with its
 * audit row; grants the period's included credits when the plan in force is paid. Returns the store whose
 * credits changed (for the tenant copy's sync once committed), if any.
 */
export async function writePlanState(
  ctx: AppContext,
  t: Transaction,
  userId: string,
  next: PlanState,
  actor: LedgerActor,
  current: Subscription | null,
): Promise<string | null> {
  const { Subscription } = ctx.master.models;
  const before = current ? { planId: current.planId, status: current.status } : { planId: 'free', status: 'active' };
  const fields = {
    planId: next.planId,
    status: next.status,
    provider: next.provider,
    providerRef: next.providerRef ?? current?.providerRef ?? null,
    currentPeriodStart: next.periodStart,
    currentPeriodEnd: next.periodEnd,
    lastEventAt: next.eventAt ?? current?.lastEventAt ?? null,
  };
  if (current) await current.update(fields, { transaction: t });
  else await Subscription.create({ userId, ...fields }, { transaction: t });
  if (before.planId !== next.planId || before.status !== next.status) {
    await audit(ctx.master, t, {
      actorUserId: actor.userId,
      action: 'subscription.plan_changed',
      targetType: 'user',
      targetId: userId,
      data: { from: before, to: { planId: next.planId, status: next.status }, provider: next.provider },
      requestId: actor.requestId,
    });
  }
  if (next.status !== 'active' || !next.periodStart) return null;
  const plan = await ctx.master.models.Plan.findByPk(next.planId, { rejectOnEmpty: true, transaction: t });
  return grantIncludedCredits(ctx, t, userId, plan, next.periodStart, actor);
}

/**
 * The plan's included credits for the period starting at `periodStart`, granted once (an upgrade within the
 * period tops the grant up to the new plan's amount) to the account's oldest live store, through the ledger
 * in the caller's transaction. An account without a store gets none for that period.
 */
async function grantIncludedCredits(
  ctx: AppContext,
  t: Transaction,
  userId: string,
  plan: Plan,
  periodStart: Date,
  actor: LedgerActor,
): Promise<string | null> {
  if (plan.includedCredits <= 0) return null;
  const q = <R extends object>(sql: string, bind: unknown[]) =>
    ctx.master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT, transaction: t });
  const [granted] = await q<{ credits: number }>(
    'SELECT credits FROM plan_credit_grants WHERE user_id = $1::uuid AND period_start = $2::timestamptz FOR UPDATE',
    [userId, periodStart.toISOString()],
  );
  const already = granted?.credits ?? 0;
  if (plan.includedCredits <= already) return null;
  const [store] = await q<{ id: string }>(
    `SELECT id FROM stores WHERE owner_id = $1::uuid AND status = ANY($2::text[]) ORDER BY created_at, id LIMIT 1`,
    [userId, LIVE_STORE_STATUSES],
  );
  if (!store) return null;
  const outcome = await applyChange(
    ctx,
    {
      storeId: store.id,
      type: 'adjustment',
      amount: plan.includedCredits - already,
      idempotencyKey: `plan-credits:${userId}:${periodStart.toISOString()}:${plan.includedCredits}`,
      reason: `Included credits of the ${plan.name} plan (period from ${periodStart.toISOString()})`,
    },
    actor,
    t,
  );
  if (outcome.kind !== 'applied') throw new Error(`included credits not granted: ${outcome.kind}`);
  await q(
    `INSERT INTO plan_credit_grants (user_id, period_start, store_id, credits) VALUES ($1::uuid, $2::timestamptz, $3::uuid, $4::int)
     ON CONFLICT (user_id, period_start) DO UPDATE SET credits = EXCLUDED.credits, store_id = EXCLUDED.store_id, updated_at = now()
     RETURNING user_id`,
    [userId, periodStart.toISOString(), store.id, plan.includedCredits],
  );
  return store.id;
}

const addMonth = (d: Date) => {
  const next = new Date(d);
  next.setUTCMonth(next.getUTCMonth() + 1);
  return next;
};

/**
 * Change an account's plan at once (the manual provider, or a platform admin): refused with 409
 * PLAN_LIMIT_EXCEEDED when what the account holds is over the plan's limits. A change keeps the running
 * period (a new one starts when there is none, or it has ended).
 */
async function applyPlanNow(ctx: AppContext, userId: string, planId: string, actor: LedgerActor) {
  const synced = await ctx.master.sequelize.transaction(async (t) => {
    await lockUser(ctx, userId, t);
    const plan = await requirePlan(ctx, planId, t);
    refuseOverages(plan, overages(plan, await usageOf(ctx, userId, t)));
    const current = await liveSubscription(ctx, userId, t, true);
    const now = new Date();
    const running = current?.currentPeriodStart && current.currentPeriodEnd && current.currentPeriodEnd > now;
    const periodStart = running ? current.currentPeriodStart! : now;
    await supersedePending(ctx, userId, t);
    return writePlanState(
      ctx,
      t,
      userId,
      {
        planId,
        status: 'active',
        provider: current?.provider ?? 'manual',
        periodStart,
        periodEnd: running ? current.currentPeriodEnd : addMonth(periodStart),
      },
      actor,
      current,
    );
  });
  await announcePlanChange(ctx, userId);
  if (synced) await requestCreditSync(ctx, synced);
}

async function supersedePending(ctx: AppContext, userId: string, t: Transaction) {
  await ctx.master.sequelize.query(
    `UPDATE subscription_requests SET status = 'superseded', updated_at = now() WHERE user_id = $1::uuid AND status = 'pending'`,
    { bind: [userId], transaction: t },
  );
}

/**
 * POST /api/subscription. With the manual provider the plan applies at once (200); with Stripe the change
 * is recorded as pending (202) with the reference its checkout carries, and the signed webhook applies it.
 * Either way a plan whose limits are below current usage is refused first (409 PLAN_LIMIT_EXCEEDED).
 */
export async function changePlan(
  ctx: AppContext,
  actor: LedgerActor & { userId: string },
  input: ChangePlanInput,
): Promise<{ status: 200 | 202; body: SubscriptionDto }> {
  if (ctx.config.paymentsProvider === 'manual') {
    await applyPlanNow(ctx, actor.userId, input.planId, actor);
    return { status: 200, body: await getSubscription(ctx, actor.userId) };
  }
  await ctx.master.sequelize.transaction(async (t) => {
    await lockUser(ctx, actor.userId, t);
    const plan = await requirePlan(ctx, input.planId, t);
    refuseOverages(plan, overages(plan, await usageOf(ctx, actor.userId, t)));
    await supersedePending(ctx, actor.userId, t);
    const reference = `tnry_sub_${randomBytes(12).toString('hex')}`;
    await ctx.master.sequelize.query(
      `INSERT INTO subscription_requests (reference, user_id, plan_id) VALUES ($1::text, $2::uuid, $3::text)`,
      { bind: [reference, actor.userId, plan.id], transaction: t },
    );
    await audit(ctx.master, t, {
      actorUserId: actor.userId,
      action: 'subscription.change_requested',
      targetType: 'user',
      targetId: actor.userId,
      data: { planId: plan.id, provider: 'stripe', reference },
      requestId: actor.requestId,
    });
  });
  return { status: 202, body: await getSubscription(ctx, actor.userId) };
}

/** PUT /api/admin/users/:id/plan: a platform admin sets an account's plan at once, whatever the provider. */
export async function setUserPlan(ctx: AppContext, actor: LedgerActor, userId: string, input: ChangePlanInput) {
  await applyPlanNow(ctx, userId, input.planId, actor);
  return getSubscription(ctx, userId);
}

/**
 * The maintenance sweep of billing periods: a manual subscription whose period has ended starts the next one
 * (Stripe's periods come with its webhooks), and an active paid plan whose current period has had no credits
 * yet (its account had no store then) gets them now. Each account in its own transaction, under its lock.
 */
export async function settleSubscriptionPeriods(ctx: AppContext): Promise<{ renewed: number; granted: number }> {
  const due = await ctx.master.sequelize.query<{ userId: string }>(
    `SELECT s.user_id AS "userId"
       FROM subscriptions s JOIN plans p ON p.id = s.plan_id
      WHERE s.status = 'active'
        AND ((s.provider = 'manual' AND s.current_period_end <= now())
          OR (p.included_credits > 0 AND s.current_period_start IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM plan_credit_grants g
                 WHERE g.user_id = s.user_id AND g.period_start = s.current_period_start AND g.credits >= p.included_credits)))`,
    { type: QueryTypes.SELECT },
  );
  let renewed = 0;
  let granted = 0;
  for (const { userId } of due) {
    const settled = await ctx.master.sequelize.transaction(async (t) => {
      await lockUser(ctx, userId, t);
      const current = await liveSubscription(ctx, userId, t, true);
      if (!current || current.status !== 'active') return null;
      let start = current.currentPeriodStart;
      let end = current.currentPeriodEnd;
      if (current.provider === 'manual' && end && end <= new Date()) {
        // Periods follow one another from the first: a sweep that ran late skips the periods wholly past.
        while (end <= new Date()) [start, end] = [end, addMonth(end)];
        renewed++;
      }
      const synced = await writePlanState(
        ctx,
        t,
        userId,
        { planId: current.planId, status: 'active', provider: current.provider, periodStart: start, periodEnd: end },
        { userId: null, requestId: null },
        current,
      );
      return { synced };
    });
    if (!settled) continue;
    await announcePlanChange(ctx, userId);
    const { synced } = settled;
    if (synced) {
      granted++;
      await requestCreditSync(ctx, synced);
    }
  }
  return { renewed, granted };
}
