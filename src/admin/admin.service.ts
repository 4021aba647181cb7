import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { decodeCursor, olderThan, toPage } from '../http/pagination';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import { statusOfItsDatabase } from '../stores/lifecycle';
import { migrateComingBack } from '../migrations/migration-runner';
import { resumeBackgroundWork } from '../stores/stores.service';

interface TenantRow {
  id: string;
  name: string;
  slug: string;
  status: string;
  createdAt: Date;
  cursorTs: string;
  mode: string | null;
  server: string | null;
  dbStatus: string | null;
  schemaVersion: number | null;
  lastError: string | null;
  migrationError: string | null;
}

/** Every store with its database's state and, where this instance holds one, its pool. */
export async function listStoresWithDatabases(ctx: AppContext, opts: { limit: number; cursor?: string }) {
  const after = decodeCursor(opts.cursor);
  const values: unknown[] = [opts.limit + 1];
  const rows = await ctx.master.sequelize.query<TenantRow>(
    `SELECT s.id, s.name, s.slug, s.status, s.created_at AS "createdAt", s.created_at::text AS "cursorTs",
            d.mode, d.server, d.status AS "dbStatus", d.schema_version AS "schemaVersion", d.last_error AS "lastError",
            d.migration_error AS "migrationError"
       FROM stores s LEFT JOIN store_databases d ON d.store_id = s.id
      ${after ? `WHERE ${olderThan('s', after, values)}` : ''}
      ORDER BY s.created_at DESC, s.id DESC LIMIT $1::int`,
    { bind: values, type: QueryTypes.SELECT },
  );
  return toPage(rows, opts.limit, (r) => ({
    id: r.id,
    name: r.name,
    slug: r.slug,
    status: r.status,
    createdAt: new Date(r.createdAt).toISOString(),
    database: r.mode
      ? {
          mode: r.mode,
          server: r.server,
          status: r.dbStatus,
          schemaVersion: r.schemaVersion,
          lastError: r.lastError,
          lastMigrationError: r.migrationError,
        }
      : null,
    pool: ctx.tenants.peek(r.id),
  }));
}

/**
 * Suspend or resume a store. The suspension is recorded in suspended_at, which a deletion keeps: a deleted
 * store can be suspended too, and one that was suspended comes back `suspended` when restored. Only this
 * resume clears it.
 */
export async function setSuspended(ctx: AppContext, adminId: string, storeId: string, suspend: boolean) {
  const { Store } = ctx.master.models;
  // Before the lock: a second connection inside the transaction could wait on a full pool.
  const dbStatus = suspend ? null : await statusOfItsDatabase(ctx, storeId);
  const store = await ctx.master.sequelize.transaction(async (t) => {
    // Locked: an owner's delete or restore at the same moment cannot drop the suspension.
    const row = await Store.findByPk(storeId, { transaction: t, lock: t.LOCK.UPDATE });
    if (!row) throw noSuchStore();
    const deleted = row.status === 'deleted';
    if (suspend) {
      if (!row.suspendedAt || row.status !== (deleted ? 'deleted' : 'suspended')) {
        await row.update(
          { status: deleted ? 'deleted' : 'suspended', suspendedAt: row.suspendedAt ?? new Date() },
          { transaction: t },
        );
      }
    } else {
      if (row.status !== 'suspended' && !(deleted && row.suspendedAt))
        throw fail(ErrorCode.CONFLICT, 'This store is not suspended');
      await row.update({ status: deleted ? 'deleted' : dbStatus!, suspendedAt: null }, { transaction: t });
    }
    await audit(ctx.master, t, {
      actorUserId: adminId,
      storeId,
      action: suspend ? 'store.suspended' : 'store.resumed',
      targetType: 'store',
      targetId: storeId,
    });
    return row;
  });
  if (!suspend) await resumeBackgroundWork(ctx, storeId, store.status);
  // Fleet runs pass suspended stores by: it catches up before its first request.
  if (!suspend && store.status === 'active') await migrateComingBack(ctx, storeId);
  // Every instance drops its handle: store routes answer 423 at once.
  await ctx.tenants.invalidate(storeId);
  return { id: store.id, status: store.status };
}
