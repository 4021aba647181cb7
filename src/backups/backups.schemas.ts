import { z } from 'zod';
import { Uuid } from '../http/schemas';

export const BackupParams = z.object({ id: Uuid, backupId: Uuid });

export const BackupCreatedDto = z.object({ backupId: z.uuid() }).meta({ id: 'BackupCreated' });

export const BackupDto = z
  .object({
    id: z.uuid(),
    state: z.enum(['queued', 'running', 'completed', 'failed']),
    /** The store's tenant schema version the backup was taken at (null until it has run). */
    schemaVersion: z.number().int().nullable(),
    /** The archive's size (compressed and encrypted), null until completed. */
    bytes: z.number().int().nullable(),
    createdAt: z.string(),
    /** When the archive is removed (the store's plan's backup retention). */
    expiresAt: z.string(),
  })
  .meta({ id: 'Backup' });

export const BackupListDto = z.object({ items: z.array(BackupDto) }).meta({ id: 'BackupList' });

export const RestoreJobDto = z.object({ jobId: z.string() }).meta({ id: 'RestoreJob' });
