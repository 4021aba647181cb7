import { Op } from 'sequelize';
import type { AppContext } from './app-context';
import { tenantServers } from './db/tenant-servers';
import { endAbandoned, removeExpired, scheduleDueBackups } from './backups/backups.service';
import { rotateDuePasswords } from './hygiene/store-passwords';
import { reconcile } from './hygiene/reconcile';
import { resumeOrphanedRuns } from './migrations/migration-runs.service';
import { tendMoves } from './moves/move-runner';
import { refillWarmPool } from './provisioning/templates';
import type { JobPayloads } from './queue/queues';
import { purgeDeletedStores } from './stores/purge';
import { sampleStorage } from './subscriptions/storage';
import { settleSubscriptionPeriods } from './subscriptions/subscriptions.service';
import { flushRequestCounts } from './usage/request-counter';

/** Housekeeping that any one worker may do (the maintenance queue's processor, scheduled by the worker). */
export async function processMaintenance(
  ctx: AppContext,
  data: JobPayloads['maintenance'],
): Promise<Record<string, number>> {
  switch (data.task) {
    case 'purge-deleted-stores':
      return purgeDeletedStores(ctx);
    case 'refill-warm-pool': {
      let created = 0;
      for (const server of tenantServers(ctx))
        created += (
          await refillWarmPool(server, ctx.config.provisioning.warmPool, ctx.config.provisioning.databasePrefix)
        ).created;
      return { created };
    }
    case 'resume-migration-runs':
      return resumeOrphanedRuns(ctx);
    case 'sample-storage':
      return sampleStorage(ctx);
    case 'settle-subscriptions':
      return settleSubscriptionPeriods(ctx);
    case 'flush-request-counts':
      return flushRequestCounts(ctx);
    case 'reconcile-dry-run': {
      // Reported only (its counts are on /metrics): repairs are an operator's call.
      const { counts } = await reconcile(ctx, { userId: null, label: 'schedule' });
      return counts;
    }
    case 'rotate-store-passwords':
      // Unfinished rotations, then the passwords older than TENANT_PASSWORD_ROTATION_DAYS (bounded per run).
      return rotateDuePasswords(
        {
          master: ctx.master,
          encryptor: ctx.encryptor,
          adminPools: ctx.adminPools,
          servers: tenantServers(ctx),
          invalidate: (storeId) => ctx.tenants.invalidate(storeId),
        },
        ctx.config.passwordRotation,
      );
    case 'schedule-backups':
      // Backups and restores whose worker died for good are ended first (so the store can have new ones).
      return { ...(await endAbandoned(ctx)), ...(await scheduleDueBackups(ctx)) };
    case 'expire-backups':
      return removeExpired(ctx);
    case 'tend-store-moves':
      return tendMoves(ctx);
    case 'prune-revoked-tokens': {
      const removed = await ctx.master.models.RevokedToken.destroy({ where: { expiresAt: { [Op.lt]: new Date() } } });
      return { removed };
    }
  }
}
