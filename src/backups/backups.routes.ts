import type { Request } from 'express';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformClaims, requireAuth } from '../http/authenticate';
import { StoreIdParams } from '../http/schemas';
import { BackupCreatedDto, BackupListDto, BackupParams, RestoreJobDto } from './backups.schemas';
import * as backups from './backups.service';

const ACCESS = { 403: 'FORBIDDEN (not a member, or not the owner or an admin)', 404: 'STORE_NOT_FOUND' };

/** A store's backups (owner/admin): taken on demand or by the daily schedule, restored into a new database. */
export function backupRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  const common = { tags: ['stores'], secured: true, middleware: [requireAuth(ctx, 'platform')] };
  const me = (req: Request) => platformClaims(req.auth).sub;

  api.post(
    '/:id/backups',
    {
      ...common,
      operationId: 'createStoreBackup',
      summary: "Back the store's database up now (owner/admin)",
      description:
        "A consistent snapshot of every table, compressed and encrypted, kept for the plan's backup retention. " +
        'Runs in the background: the list shows its state and size.',
      params: StoreIdParams,
      status: 202,
      response: BackupCreatedDto,
      errors: { ...ACCESS, 409: 'STORE_NOT_READY', 423: 'STORE_SUSPENDED' },
    },
    ({ params, req }) => backups.requestBackup(ctx, me(req), params.id),
  );
  api.get(
    '/:id/backups',
    {
      ...common,
      operationId: 'listStoreBackups',
      summary: "The store's backups, newest first (owner/admin)",
      params: StoreIdParams,
      response: BackupListDto,
      errors: ACCESS,
    },
    ({ params, req }) => backups.listBackups(ctx, me(req), params.id),
  );
  api.post(
    '/:id/backups/:backupId/restore',
    {
      ...common,
      operationId: 'restoreStoreBackup',
      summary: 'Restore a backup into a new database and switch the store to it (owner/admin)',
      description:
        'The archive is checked against its manifest (row counts, checksums) before the switch; a damaged one ' +
        'fails the restore and the store keeps its database. During the switch, store requests wait briefly ' +
        'or answer 503 TENANT_MIGRATING with Retry-After. The previous database is kept until the backup ' +
        'retention ends. Credits, hostnames and members are not affected.',
      params: BackupParams,
      status: 202,
      response: RestoreJobDto,
      errors: {
        ...ACCESS,
        404: 'STORE_NOT_FOUND | NOT_FOUND (no such backup of this store)',
        409: 'STORE_NOT_READY | CONFLICT (the backup is not completed, a restore is running, or the store is on its own database)',
        423: 'STORE_SUSPENDED',
      },
    },
    ({ params, req }) => backups.requestRestore(ctx, me(req), params.id, params.backupId),
  );
  return api;
}
