import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import type { TenantConnection } from '../db/tenant-handle';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import { dropTenantDatabase } from '../db/tenant-server-admin';
import { serverByKey } from '../db/tenant-servers';
import { RESTORE_WINDOW_DAYS } from './stores.service';

/**
 * Stores deleted longer ago than the restore window lose their database: a managed one is dropped with its
 * role, an external one is only forgotten (it is the owner's). Their hostnames are released. The store row
 * stays, deleted, for the ledger and the audit trail.
 */
export async function purgeDeletedStores(ctx: AppContext): Promise<{ purged: number }> {
  const due = await ctx.master.sequelize.query<{
    storeId: string;
    mode: string | null;
    server: string | null;
    credentials: string | null;
  }>(
    `SELECT s.id AS "storeId", d.mode, d.server, d.credentials
       FROM stores s LEFT JOIN store_databases d ON d.store_id = s.id
      WHERE s.status = 'deleted' AND s.deleted_at < now() - make_interval(days => $1::int)
        AND (d.store_id IS NOT NULL OR EXISTS (SELECT 1 FROM store_hostnames h WHERE h.store_id = s.id))`,
    { bind: [RESTORE_WINDOW_DAYS], type: QueryTypes.SELECT },
  );
  let purged = 0;
  for (const store of due) {
    try {
      if (store.mode === 'managed' && store.server && store.credentials) {
        const { database, user } = ctx.encryptor.decryptJson<TenantConnection>(
          store.credentials,
          secretContext.storeCredentials(store.storeId),
        );
        await dropTenantDatabase(serverByKey(ctx, store.server).adminUrl, { database, role: user });
      }
      const hostnames = await ctx.master.sequelize.transaction(async (t) => {
        const { StoreDatabase, StoreHostname } = ctx.master.models;
        const released = await StoreHostname.findAll({ where: { storeId: store.storeId }, transaction: t });
        await StoreHostname.destroy({ where: { storeId: store.storeId }, transaction: t });
        await StoreDatabase.destroy({ where: { storeId: store.storeId }, transaction: t });
        await audit(ctx.master, t, {
          actorUserId: null,
          storeId: store.storeId,
          action: 'store.purged',
          targetType: 'store',
          targetId: store.storeId,
          data: { mode: store.mode },
        });
        return released.map((h) => h.hostname);
      });
      await ctx.tenants.hostnamesChanged(hostnames);
      purged++;
    } catch (err) {
      // One store's server being down must not stop the others; the next run tries again.
      logger.warn({ storeId: store.storeId, err: (err as Error).message }, 'purging a deleted store failed');
    }
  }
  return { purged };
}
