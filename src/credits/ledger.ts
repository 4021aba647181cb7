import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { constraintOf, pgCode, PgCode } from '../db/errors';
import { olderThan, type Position } from '../http/pagination';
import type { LedgerEntry, Payment } from './credits.schemas';

/**
 * The credit ledger in the master DB. Every completed change is one credit_transactions row written by the
 * same statement that moves the balance, so the two can never disagree:
 *   - a debit is a guarded `UPDATE … WHERE balance + amount >= 0` (and the table's CHECK behind it), so the
 *     balance never goes below 0 however many requests race; the balance row's lock orders them;
 *   - every completed row takes the store's next `seq` under that lock (dense, in commit order; see
 *     sql/master/0002), which is how the tenant cache knows what it is missing;
 *   - the unique (store_id, idempotency_key) index makes a repeated key fail the whole statement (23505),
 *     balance update included, and the caller then returns the row that won.
 */

export interface LedgerActor {
  /** The platform user acting, or null for the payment provider. */
  userId: string | null;
  requestId: string | null;
}

export type TransactionType = LedgerEntry['type'];

/** A credit_transactions row as the ledger reads it, with the payment of a purchase when it has one. */
export interface LedgerRow {
  id: string;
  storeId: string;
  type: TransactionType;
  status: LedgerEntry['status'];
  amount: string;
  balanceAfter: string | null;
  service: string | null;
  quantity: number | null;
  reason: string | null;
  idempotencyKey: string | null;
  createdAt: Date;
  paymentProvider: Payment['provider'] | null;
  paymentReference: string | null;
  paymentAmountCents: number | null;
  paymentCurrency: string | null;
  paymentStatus: Payment['status'] | null;
}

export function toTransactionDto(row: LedgerRow): LedgerEntry {
  return {
    id: row.id,
    type: row.type,
    status: row.status,
    amount: Number(row.amount),
    balanceAfter: row.balanceAfter === null ? null : Number(row.balanceAfter),
    service: row.service,
    quantity: row.quantity,
    reason: row.reason,
    idempotencyKey: row.idempotencyKey,
    createdAt: new Date(row.createdAt).toISOString(),
  };
}

export function toPaymentDto(row: LedgerRow): Payment | null {
  if (!row.paymentProvider) return null;
  return {
    provider: row.paymentProvider,
    reference: row.paymentReference,
    amountCents: Number(row.paymentAmountCents),
    currency: (row.paymentCurrency ?? '').trim(),
    status: row.paymentStatus!,
  };
}

/** The columns of LedgerRow from a credit_transactions row `t` and a billing row `b` (or NULLs). */
const LEDGER_COLUMNS = (t: string, b: string | null) => `
  ${t}.id, ${t}.store_id AS "storeId", ${t}.type, ${t}.status, ${t}.amount::text AS amount, ${t}.balance_after::text AS "balanceAfter",
  ${t}.service, ${t}.quantity, ${t}.reason, ${t}.idempotency_key AS "idempotencyKey", ${t}.created_at AS "createdAt",
  ${b ? `${b}.provider` : 'NULL'} AS "paymentProvider", ${b ? `${b}.provider_ref` : 'NULL'} AS "paymentReference",
  ${b ? `${b}.amount_cents` : 'NULL'} AS "paymentAmountCents", ${b ? `${b}.currency` : 'NULL'} AS "paymentCurrency",
  ${b ? `${b}.status` : 'NULL'} AS "paymentStatus"`;

/** Adds to the balance (making the row of a store that has none yet). */
const CREDIT_BALANCE = `
  INSERT INTO credit_balances AS b (store_id, balance, seq) VALUES ($1::uuid, $2::bigint, 1)
  ON CONFLICT (store_id) DO UPDATE SET balance = b.balance + EXCLUDED.balance, seq = b.seq + 1, updated_at = now()
  RETURNING balance, seq`;
/** Takes from the balance only if enough is there: no row back means not enough. */
const DEBIT_BALANCE = `
  UPDATE credit_balances SET balance = balance + $2::bigint, seq = seq + 1, updated_at = now()
   WHERE store_id = $1::uuid AND balance + $2::bigint >= 0
  RETURNING balance, seq`;

/**
 * One completed change as one statement (one implicit transaction, one round trip while the balance row is
 * locked): balance, ledger row, usage metrics of a spend, the payment of a manual purchase, audit log.
 */
const changeSql = (direction: 'credit' | 'debit') => `
WITH bal AS (${direction === 'credit' ? CREDIT_BALANCE : DEBIT_BALANCE}),
tx AS (
  INSERT INTO credit_transactions (store_id, type, status, amount, balance_after, seq, service, quantity, idempotency_key, reason, created_by)
  SELECT $1::uuid, $3::text, 'completed', $2::bigint, bal.balance, bal.seq, $4::text, $5::int, $6::text, $7::text, $8::uuid FROM bal
  RETURNING *
),
usage AS (
  INSERT INTO usage_metrics AS u (store_id, service, day, quantity, credits)
  SELECT store_id, service, (created_at AT TIME ZONE 'UTC')::date, quantity, -amount FROM tx WHERE type = 'spend'
  ON CONFLICT (store_id, service, day) DO UPDATE SET quantity = u.quantity + EXCLUDED.quantity, credits = u.credits + EXCLUDED.credits
),
billing AS (
  INSERT INTO billing_transactions (store_id, user_id, provider, amount_cents, currency, status, credit_transaction_id)
  SELECT store_id, created_by, $10::text, $11::int, $12::text, 'succeeded', id FROM tx WHERE $10::text IS NOT NULL
  RETURNING *
),
audit AS (
  INSERT INTO audit_log (actor_user_id, store_id, action, target_type, target_id, data, request_id)
  SELECT created_by, store_id, 'credits.' || type, 'credit_transaction', id::text,
         jsonb_strip_nulls(jsonb_build_object('amount', amount, 'balanceAfter', balance_after, 'service', service, 'quantity', quantity, 'reason', reason, 'idempotencyKey', idempotency_key)),
         $9::text
    FROM tx
)
SELECT ${LEDGER_COLUMNS('tx', 'billing')} FROM tx LEFT JOIN billing ON true`;
const CREDIT_SQL = changeSql('credit');
const DEBIT_SQL = changeSql('debit');

export interface ChangeInput {
  storeId: string;
  type: Exclude<TransactionType, 'refund'>;
  /** Signed: negative takes credits away. */
  amount: number;
  service?: string | null;
  quantity?: number | null;
  idempotencyKey?: string | null;
  reason?: string | null;
  /** The payment that bought a purchase completed at once (manual provider). */
  payment?: { provider: 'manual'; amountCents: number; currency: string };
}

/** What became of a change: done, refused for want of credits, or its idempotency key was taken first. */
export type ChangeOutcome = { kind: 'applied'; row: LedgerRow } | { kind: 'insufficient' } | { kind: 'duplicate-key' };

function isIdempotencyConflict(err: unknown): boolean {
  return pgCode(err) === PgCode.UNIQUE_VIOLATION && constraintOf(err) === 'credit_transactions_idempotency';
}

/**
 * Apply one completed change to a store's balance (see changeSql). Inside the caller's `transaction` when one
 * is given (a repeated idempotency key then aborts that transaction: such a caller guards its key itself).
 */
export async function applyChange(
  ctx: AppContext,
  input: ChangeInput,
  actor: LedgerActor,
  transaction?: Transaction,
): Promise<ChangeOutcome> {
  const sql = input.amount > 0 ? CREDIT_SQL : DEBIT_SQL;
  const bind = [
    input.storeId,
    input.amount,
    input.type,
    input.service ?? null,
    input.quantity ?? null,
    input.idempotencyKey ?? null,
    input.reason ?? null,
    actor.userId,
    actor.requestId,
    input.payment?.provider ?? null,
    input.payment?.amountCents ?? null,
    input.payment?.currency ?? null,
  ];
  try {
    const rows = await ctx.master.sequelize.query<LedgerRow>(sql, { bind, type: QueryTypes.SELECT, transaction });
    return rows.length ? { kind: 'applied', row: rows[0] } : { kind: 'insufficient' };
  } catch (err) {
    if (isIdempotencyConflict(err)) return { kind: 'duplicate-key' };
    throw err;
  }
}

/**
 * A purchase waiting for its payment: a pending ledger row (no balance change, no seq) and its pending
 * billing row carrying the reference the payment provider will send back.
 */
export async function createPendingPurchase(
  ctx: AppContext,
  input: {
    storeId: string;
    amount: number;
    idempotencyKey: string;
    payment: { provider: 'stripe'; reference: string; amountCents: number; currency: string };
  },
  actor: LedgerActor,
): Promise<{ kind: 'created'; row: LedgerRow } | { kind: 'duplicate-key' }> {
  const sql = `
    WITH tx AS (
      INSERT INTO credit_transactions (store_id, type, status, amount, idempotency_key, created_by)
      VALUES ($1::uuid, 'purchase', 'pending', $2::bigint, $3::text, $4::uuid)
      RETURNING *
    ),
    billing AS (
      INSERT INTO billing_transactions (store_id, user_id, provider, provider_ref, amount_cents, currency, status, credit_transaction_id)
      SELECT store_id, created_by, $5::text, $6::text, $7::int, $8::text, 'pending', id FROM tx
      RETURNING *
    ),
    audit AS (
      INSERT INTO audit_log (actor_user_id, store_id, action, target_type, target_id, data, request_id)
      SELECT created_by, store_id, 'credits.purchase.pending', 'credit_transaction', id::text,
             jsonb_build_object('amount', amount, 'provider', $5::text, 'reference', $6::text, 'idempotencyKey', idempotency_key), $9::text
        FROM tx
    )
    SELECT ${LEDGER_COLUMNS('tx', 'billing')} FROM tx JOIN billing ON true`;
  const p = input.payment;
  try {
    const rows = await ctx.master.sequelize.query<LedgerRow>(sql, {
      bind: [
        input.storeId,
        input.amount,
        input.idempotencyKey,
        actor.userId,
        p.provider,
        p.reference,
        p.amountCents,
        p.currency,
        actor.requestId,
      ],
      type: QueryTypes.SELECT,
    });
    return { kind: 'created', row: rows[0] };
  } catch (err) {
    if (isIdempotencyConflict(err)) return { kind: 'duplicate-key' };
    throw err;
  }
}

/** The transaction a store made with this idempotency key, with its payment, if any. */
export async function findByIdempotencyKey(ctx: AppContext, storeId: string, key: string): Promise<LedgerRow | null> {
  const rows = await ctx.master.sequelize.query<LedgerRow>(
    `SELECT ${LEDGER_COLUMNS('t', 'b')}
       FROM credit_transactions t LEFT JOIN billing_transactions b ON b.credit_transaction_id = t.id
      WHERE t.store_id = $1::uuid AND t.idempotency_key = $2::text`,
    { bind: [storeId, key], type: QueryTypes.SELECT },
  );
  return rows[0] ?? null;
}

export async function currentBalance(ctx: AppContext, storeId: string): Promise<number> {
  const rows = await ctx.master.sequelize.query<{ balance: string }>(
    'SELECT balance::text AS balance FROM credit_balances WHERE store_id = $1::uuid',
    {
      bind: [storeId],
      type: QueryTypes.SELECT,
    },
  );
  return rows.length ? Number(rows[0].balance) : 0;
}

/** A page of a store's transactions, newest first (keyset on created_at, id). */
export async function listTransactions(ctx: AppContext, storeId: string, limit: number, after: Position | null) {
  const values: unknown[] = [storeId, limit + 1];
  return ctx.master.sequelize.query<LedgerRow & { cursorTs: string }>(
    `SELECT ${LEDGER_COLUMNS('t', null)}, t.created_at::text AS "cursorTs"
       FROM credit_transactions t
      WHERE t.store_id = $1::uuid ${after ? `AND ${olderThan('t', after, values)}` : ''}
      ORDER BY t.created_at DESC, t.id DESC
      LIMIT $2::int`,
    { bind: values, type: QueryTypes.SELECT },
  );
}

export interface PendingPayment {
  billingId: string;
  storeId: string;
  status: Payment['status'];
  amountCents: number;
  currency: string;
  creditTransactionId: string | null;
}

/** A query inside the purchase's transaction, answering its rows. */
type InTransaction = <R extends object>(sql: string, bind: unknown[]) => Promise<R[]>;

export type PurchaseOutcome =
  | { kind: 'completed'; row: LedgerRow }
  | { kind: 'unknown' }
  | { kind: 'not-pending'; status: string }
  | { kind: 'rejected'; reason: string; storeId: string };

/** The provider's payment, locked: a second delivery of the same event waits here. */
async function lockPayment(
  q: InTransaction,
  provider: 'stripe',
  reference: string,
): Promise<PendingPayment | undefined> {
  const [payment] = await q<PendingPayment>(
    `SELECT id AS "billingId", store_id AS "storeId", status, amount_cents AS "amountCents", currency, credit_transaction_id AS "creditTransactionId"
       FROM billing_transactions WHERE provider = $1::text AND provider_ref = $2::text FOR UPDATE`,
    [provider, reference],
  );
  return payment;
}

/** Why the payment was refused, in the audit log; the purchase stays pending. */
async function recordRejection(
  q: InTransaction,
  payment: PendingPayment,
  reason: string,
  audit: Record<string, unknown>,
): Promise<void> {
  await q(
    `INSERT INTO audit_log (store_id, action, target_type, target_id, data) VALUES ($1::uuid, 'credits.purchase.payment_rejected', 'credit_transaction', $2::text, $3::jsonb) RETURNING id`,
    [payment.storeId, payment.creditTransactionId, JSON.stringify({ ...audit, reason })],
  );
}

/** The purchase's ledger row, locked, while it is still pending: its amount, or undefined. */
async function lockPendingCredit(q: InTransaction, creditTransactionId: string): Promise<string | undefined> {
  const [tx] = await q<{ amount: string }>(
    `SELECT amount::text AS amount FROM credit_transactions WHERE id = $1::uuid AND status = 'pending' FOR UPDATE`,
    [creditTransactionId],
  );
  return tx?.amount;
}

/** Balance credited, ledger row completed (taking its seq), payment succeeded and audited, in one statement. */
async function credit(
  q: InTransaction,
  payment: PendingPayment,
  amount: string,
  audit: Record<string, unknown>,
): Promise<LedgerRow> {
  const [bal] = await q<{ balance: string; seq: string }>(CREDIT_BALANCE, [payment.storeId, amount]);
  const [row] = await q<LedgerRow>(
    `WITH tx AS (
       UPDATE credit_transactions SET status = 'completed', balance_after = $2::bigint, seq = $3::bigint WHERE id = $1::uuid RETURNING *
     ), billing AS (
       UPDATE billing_transactions SET status = 'succeeded', updated_at = now() WHERE id = $4::uuid RETURNING *
     ), audit AS (
       INSERT INTO audit_log (store_id, action, target_type, target_id, data)
       SELECT store_id, 'credits.purchase.completed', 'credit_transaction', id::text,
              jsonb_build_object('amount', amount, 'balanceAfter', balance_after) || $5::jsonb FROM tx
     )
     SELECT ${LEDGER_COLUMNS('tx', 'billing')} FROM tx JOIN billing ON true`,
    [payment.creditTransactionId, bal.balance, bal.seq, payment.billingId, JSON.stringify(audit)],
  );
  return row;
}

/**
 * Complete a pending purchase paid through the provider, exactly once: the billing row is locked first, so
 * a second delivery of the same event waits and then finds it no longer pending. Balance, ledger row (which
 * now takes its seq), payment status and audit log change in one transaction.
 */
export async function completePendingPurchase(
  ctx: AppContext,
  provider: 'stripe',
  reference: string,
  check: (payment: PendingPayment) => string | null,
  audit: Record<string, unknown>,
): Promise<PurchaseOutcome> {
  return ctx.master.sequelize.transaction(async (t: Transaction): Promise<PurchaseOutcome> => {
    const q: InTransaction = (sql, bind) =>
      ctx.master.sequelize.query(sql, { bind, type: QueryTypes.SELECT, transaction: t });
    const payment = await lockPayment(q, provider, reference);
    if (!payment || !payment.creditTransactionId) return { kind: 'unknown' };
    if (payment.status !== 'pending') return { kind: 'not-pending', status: payment.status };
    const refused = check(payment);
    if (refused) {
      await recordRejection(q, payment, refused, audit);
      return { kind: 'rejected', reason: refused, storeId: payment.storeId };
    }
    const amount = await lockPendingCredit(q, payment.creditTransactionId);
    if (amount === undefined) return { kind: 'not-pending', status: 'not pending' };
    return { kind: 'completed', row: await credit(q, payment, amount, audit) };
  });
}
