import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import type { TenantHandle } from '../db/tenant-handle';
import { AppError } from '../lib/errors';
import { logger } from '../lib/logger';

/**
 * The store's own database keeps a copy of its credits for its own screens: credit_balance_cache (one row)
 * and credit_spending_log (the completed ledger rows). The master is the source of truth; this copy is
 * brought up to date by a queued job CREDIT_SYNC_DELAY_MS after a completed change, and catches up by
 * itself after its database was unreachable (the job is retried with back-off).
 */

/** Ledger rows copied per statement. */
export const SYNC_BATCH = 1000;

interface MasterHead {
  balance: string;
  seq: string;
  lastAt: string | null;
  /** How far the last sync copied, and the id of that row. */
  syncedSeq: string;
  syncedId: string | null;
}

interface MasterLedgerRow {
  id: string;
  type: string;
  service: string | null;
  quantity: number | null;
  amount: string;
  balanceAfter: string;
  createdAt: string;
  seq: string;
}

export type CreditSyncResult = { skipped: string } | { balance: number; seq: number; copied: number };

/**
 * The sync job: copy the master's balance and the completed ledger rows the tenant DB lacks. The ledger's
 * seq numbers are dense and the copy is written in seq order, so the copy always holds seq 1..n for some n:
 * the n recorded by the last sync (credit_sync_state) while the copy still holds that row, else its row
 * count. A store that is not served (no database yet, suspended, deleted) is skipped; an unreachable
 * database fails the job, which BullMQ retries with back-off.
 */
export async function processCreditSync(ctx: AppContext, { storeId }: { storeId: string }): Promise<CreditSyncResult> {
  let handle: TenantHandle;
  try {
    handle = await ctx.tenants.forStore(storeId);
  } catch (err) {
    if (err instanceof AppError && err.status !== 503) return { skipped: err.code };
    throw err;
  }
  return ctx.tenants.guard(handle, async (handle) => {
    const head = await masterHead(ctx, storeId);
    const target = Number(head.seq);
    let have = await copiedUpTo(handle, head);
    if (have > target) {
      // Rows the ledger does not have (someone else wrote into the copy): copy everything again.
      logger.warn(
        { storeId, have, target },
        'the tenant credit log holds more than the master ledger; copying the ledger again in full',
      );
      have = 0;
    }
    let copied = 0;
    while (have < target) {
      const rows = await masterRows(ctx, storeId, have, target);
      if (!rows.length) break;
      await copyRows(handle, rows);
      copied += rows.length;
      have = Number(rows[rows.length - 1].seq);
    }
    await handle.query(
      `INSERT INTO credit_balance_cache (id, balance, last_transaction_at, synced_at) VALUES (true, $1, $2, now())
       ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance, last_transaction_at = EXCLUDED.last_transaction_at, synced_at = now()`,
      [head.balance, head.lastAt],
    );
    await ctx.master.sequelize.query(
      `INSERT INTO credit_sync_state (store_id, synced_seq, synced_at) VALUES ($1::uuid, $2::bigint, now())
       ON CONFLICT (store_id) DO UPDATE SET synced_seq = EXCLUDED.synced_seq, synced_at = now()`,
      { bind: [storeId, target] },
    );
    return { balance: Number(head.balance), seq: target, copied };
  });
}

/**
 * The balance, the last seq and how far the last sync got, read together (so the copy is a consistent
 * prefix of the ledger).
 */
async function masterHead(ctx: AppContext, storeId: string): Promise<MasterHead> {
  const rows = await ctx.master.sequelize.query<MasterHead>(
    `SELECT b.balance::text AS balance, b.seq::text AS seq, last.created_at::text AS "lastAt",
            coalesce(s.synced_seq, 0)::text AS "syncedSeq", synced.id AS "syncedId"
       FROM credit_balances b
       LEFT JOIN credit_transactions last ON last.store_id = b.store_id AND last.seq = b.seq
       LEFT JOIN credit_sync_state s ON s.store_id = b.store_id
       LEFT JOIN credit_transactions synced ON synced.store_id = b.store_id AND synced.seq = s.synced_seq
      WHERE b.store_id = $1::uuid`,
    { bind: [storeId], type: QueryTypes.SELECT },
  );
  return rows[0] ?? { balance: '0', seq: '0', lastAt: null, syncedSeq: '0', syncedId: null };
}

/**
 * The n for which the copy holds seq 1..n: what the last sync recorded, if the copy still has that row (it
 * may since have been restored from an older backup); else its row count (a full scan, so only then).
 */
async function copiedUpTo(handle: TenantHandle, head: MasterHead): Promise<number> {
  if (head.syncedId) {
    const found = await handle.query('SELECT 1 FROM credit_spending_log WHERE transaction_id = $1', [head.syncedId]);
    if (found.length) return Number(head.syncedSeq);
  }
  return tenantLogCount(handle);
}

function masterRows(ctx: AppContext, storeId: string, afterSeq: number, uptoSeq: number): Promise<MasterLedgerRow[]> {
  return ctx.master.sequelize.query<MasterLedgerRow>(
    // Qualified: a bare `seq` in ORDER BY would be the text alias, sorting 10 before 9.
    `SELECT t.id, t.type, t.service, t.quantity, t.amount::text AS amount, t.balance_after::text AS "balanceAfter", t.created_at::text AS "createdAt", t.seq::text AS seq
       FROM credit_transactions t
      WHERE t.store_id = $1::uuid AND t.seq > $2::bigint AND t.seq <= $3::bigint
      ORDER BY t.seq LIMIT $4::int`,
    { bind: [storeId, afterSeq, uptoSeq, SYNC_BATCH], type: QueryTypes.SELECT },
  );
}

async function tenantLogCount(handle: TenantHandle): Promise<number> {
  const [row] = await handle.query<{ n: string }>('SELECT count(*)::text AS n FROM credit_spending_log');
  return Number(row.n);
}

/** One statement per batch, so the log only ever holds a prefix of the ledger. */
async function copyRows(handle: TenantHandle, rows: MasterLedgerRow[]): Promise<void> {
  await handle.query(
    `INSERT INTO credit_spending_log (transaction_id, type, service, quantity, amount, balance_after, created_at)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::timestamptz[])
     ON CONFLICT (transaction_id) DO NOTHING`,
    [
      rows.map((r) => r.id),
      rows.map((r) => r.type),
      rows.map((r) => r.service),
      rows.map((r) => r.quantity),
      rows.map((r) => r.amount),
      rows.map((r) => r.balanceAfter),
      rows.map((r) => r.createdAt),
    ],
  );
}
