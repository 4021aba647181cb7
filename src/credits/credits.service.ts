import { randomBytes } from 'node:crypto';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { decodeCursor, toPage } from '../http/pagination';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import type { MemberRole, StoreStatus } from '../models/master';
import { requestCreditSync } from '../queue/credit-sync-request';
import { refuseIfSuspended } from '../stores/lifecycle';
import {
  CREDIT_PRICE,
  MIN_STRIPE_PURCHASE,
  type AdjustInput,
  type PurchaseInput,
  type SpendInput,
} from './credits.schemas';
import {
  applyChange,
  createPendingPurchase,
  currentBalance,
  findByIdempotencyKey,
  listTransactions,
  toPaymentDto,
  toTransactionDto,
  type LedgerActor,
  type ChangeOutcome,
  type LedgerRow,
} from './ledger';

/** Who may do what with a store's credits (platform accounts that are members of the store). */
export const CREDIT_ROLES = {
  read: ['owner', 'admin', 'staff'],
  spend: ['owner', 'admin', 'staff'],
  purchase: ['owner', 'admin'],
} as const satisfies Record<string, readonly MemberRole[]>;

const insufficient = () => fail(ErrorCode.INSUFFICIENT_CREDITS, 'The store does not have enough credits for this');
const keyReused = () =>
  fail(ErrorCode.CONFLICT, 'This idempotency key was already used for a different request on this store');

interface Access {
  status: StoreStatus;
  role: MemberRole | null;
  costPerUnit: number | null;
  serviceActive: boolean | null;
}

/**
 * The caller's access to a store's credits, and (for a spend) the service's price, in one query: this is on
 * every spend's path. Missing or deleted store → 404 STORE_NOT_FOUND; not a member or a role not allowed → 403.
 */
async function requireCreditAccess(
  ctx: AppContext,
  storeId: string,
  userId: string,
  roles: readonly MemberRole[],
  service: string | null = null,
): Promise<Access> {
  const rows = await ctx.master.sequelize.query<Access>(
    `SELECT s.status, m.role, c.cost_per_unit AS "costPerUnit", c.active AS "serviceActive"
       FROM stores s
       LEFT JOIN store_members m ON m.store_id = s.id AND m.user_id = $2::uuid
       LEFT JOIN service_credit_costs c ON c.service = $3::text
      WHERE s.id = $1::uuid`,
    { bind: [storeId, userId, service], type: QueryTypes.SELECT },
  );
  const access = rows[0];
  if (!access || access.status === 'deleted') throw noSuchStore();
  if (!access.role) throw fail(ErrorCode.FORBIDDEN, 'You are not a member of this store');
  if (!roles.includes(access.role))
    throw fail(ErrorCode.FORBIDDEN, `This needs one of these store roles: ${roles.join(', ')}`);
  return access;
}

function changeDto(row: LedgerRow, balanceNow?: number) {
  const transaction = toTransactionDto(row);
  return { transaction, balance: transaction.balanceAfter ?? balanceNow ?? 0 };
}

/**
 * Settle a change that did not simply apply. The idempotency key decides: if a transaction already holds it
 * (a repeat, or a concurrent twin that won the race), that transaction is the answer — provided it was the
 * same request; else the change was refused for want of credits.
 */
async function settle(
  ctx: AppContext,
  storeId: string,
  key: string | null | undefined,
  outcome: Exclude<ChangeOutcome, { kind: 'applied' }>,
  sameRequest: (row: LedgerRow) => boolean,
) {
  const first = key ? await findByIdempotencyKey(ctx, storeId, key) : null;
  if (first) {
    if (!sameRequest(first)) throw keyReused();
    return first;
  }
  if (outcome.kind === 'insufficient') throw insufficient();
  // The key's row vanished between the conflict and the read: only a deleted store does that.
  throw fail(ErrorCode.CONFLICT, 'This request collided with another one; try again');
}

/**
 * The balance an answer shows: the transaction's balance_after once it is completed (so a repeated request
 * gets exactly the first answer), else the balance now, which a pending purchase has not changed yet.
 */
async function balanceShown(ctx: AppContext, storeId: string, row: LedgerRow): Promise<number | undefined> {
  return row.status === 'completed' ? undefined : currentBalance(ctx, storeId);
}

/**
 * What a change request answers: the new row (its store's credit cache sync queued), or for a repeated request
 * the first one's row as it is now (a pending purchase may have been paid since).
 */
async function answer<T>(
  ctx: AppContext,
  storeId: string,
  key: string | null | undefined,
  outcome: ChangeOutcome,
  sameRequest: (row: LedgerRow) => boolean,
  dto: (row: LedgerRow, balanceNow?: number) => T,
): Promise<T> {
  if (outcome.kind === 'applied') {
    await requestCreditSync(ctx, storeId);
    return dto(outcome.row);
  }
  const first = await settle(ctx, storeId, key, outcome, sameRequest);
  return dto(first, await balanceShown(ctx, storeId, first));
}

export async function getCredits(
  ctx: AppContext,
  userId: string,
  storeId: string,
  page: { limit: number; cursor?: string },
) {
  const after = decodeCursor(page.cursor);
  await requireCreditAccess(ctx, storeId, userId, CREDIT_ROLES.read);
  const [balance, rows] = await Promise.all([
    currentBalance(ctx, storeId),
    listTransactions(ctx, storeId, page.limit, after),
  ]);
  return { balance, transactions: toPage(rows, page.limit, toTransactionDto) };
}

/** The price list: every active service and what one unit of it costs, and what a credit costs. */
export async function listCosts(ctx: AppContext) {
  const rows = await ctx.master.models.ServiceCreditCost.findAll({
    where: { active: true },
    order: [['service', 'ASC']],
    raw: true,
  });
  return {
    items: rows.map((r) => ({ service: r.service, costPerUnit: r.costPerUnit, description: r.description })),
    creditPrice: { ...CREDIT_PRICE },
  };
}

/**
 * Spend credits on a service: quantity × the service's cost per unit, taken only if the balance covers it
 * (else 402 and nothing changes). Counted in usage_metrics and the audit log in the same statement.
 */
export async function spendCredits(
  ctx: AppContext,
  actor: LedgerActor & { userId: string },
  storeId: string,
  input: SpendInput,
) {
  const access = await requireCreditAccess(ctx, storeId, actor.userId, CREDIT_ROLES.spend, input.service);
  refuseIfSuspended(access);
  if (access.costPerUnit === null || !access.serviceActive) {
    throw fail(ErrorCode.VALIDATION_FAILED, 'The request body is not valid', {
      errors: [{ path: 'service', message: 'is not a service of GET /api/credits/costs' }],
    });
  }
  const price = input.quantity * access.costPerUnit;
  const outcome = await applyChange(
    ctx,
    {
      storeId,
      type: 'spend',
      amount: -price,
      service: input.service,
      quantity: input.quantity,
      idempotencyKey: input.idempotencyKey,
    },
    actor,
  );
  const sameRequest = (r: LedgerRow) =>
    r.type === 'spend' && r.service === input.service && r.quantity === input.quantity;
  return answer(ctx, storeId, input.idempotencyKey, outcome, sameRequest, changeDto);
}

/**
 * Buy credits. `manual` (development) completes at once; `stripe` records a pending purchase and hands back
 * the payment reference that the signed webhook will carry when the payment succeeds.
 */
export async function purchaseCredits(
  ctx: AppContext,
  actor: LedgerActor & { userId: string },
  storeId: string,
  input: PurchaseInput,
) {
  await requireCreditAccess(ctx, storeId, actor.userId, CREDIT_ROLES.purchase);
  const amountCents = input.amount * CREDIT_PRICE.amountCents;
  const sameRequest = (r: LedgerRow) => r.type === 'purchase' && Number(r.amount) === input.amount;

  if (ctx.config.paymentsProvider === 'manual') {
    const payment = { provider: 'manual' as const, amountCents, currency: CREDIT_PRICE.currency };
    const outcome = await applyChange(
      ctx,
      { storeId, type: 'purchase', amount: input.amount, idempotencyKey: input.idempotencyKey, payment },
      actor,
    );
    return answer(ctx, storeId, input.idempotencyKey, outcome, sameRequest, purchaseDto);
  }

  if (input.amount < MIN_STRIPE_PURCHASE) {
    throw fail(ErrorCode.VALIDATION_FAILED, 'The request body is not valid', {
      errors: [{ path: 'amount', message: `card payments buy at least ${MIN_STRIPE_PURCHASE} credits` }],
    });
  }
  const reference = `tnry_pay_${randomBytes(12).toString('hex')}`;
  const created = await createPendingPurchase(
    ctx,
    {
      storeId,
      amount: input.amount,
      idempotencyKey: input.idempotencyKey,
      payment: { provider: 'stripe', reference, amountCents, currency: CREDIT_PRICE.currency },
    },
    actor,
  );
  const row =
    created.kind === 'created' ? created.row : await settle(ctx, storeId, input.idempotencyKey, created, sameRequest);
  return purchaseDto(row, await balanceShown(ctx, storeId, row));
}

function purchaseDto(row: LedgerRow, balanceNow?: number) {
  return { ...changeDto(row, balanceNow), payment: toPaymentDto(row)! };
}

/**
 * A platform admin's correction, up or down. It may not take the balance below 0 (402 INSUFFICIENT_CREDITS,
 * like a spend). An optional idempotency key makes a retried request safe.
 */
export async function adjustCredits(
  ctx: AppContext,
  actor: LedgerActor & { userId: string },
  storeId: string,
  input: AdjustInput,
) {
  const store = await ctx.master.models.Store.findByPk(storeId, { attributes: ['id', 'status'] });
  if (!store || store.status === 'deleted') throw noSuchStore();
  const outcome = await applyChange(
    ctx,
    { storeId, type: 'adjustment', amount: input.amount, reason: input.reason, idempotencyKey: input.idempotencyKey },
    actor,
  );
  const sameRequest = (r: LedgerRow) =>
    r.type === 'adjustment' && Number(r.amount) === input.amount && r.reason === input.reason;
  return answer(ctx, storeId, input.idempotencyKey, outcome, sameRequest, changeDto);
}
