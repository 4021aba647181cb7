import type { Transaction } from 'sequelize';
import type { MasterDb } from './master';

/** One row of the master audit log: who changed what. */
export interface AuditEntry {
  /** Who made the change; null when the platform did (the operator's command line, a scheduled job). */
  actorUserId: string | null;
  storeId?: string | null;
  action: string;
  targetType: string;
  targetId: string;
  data?: Record<string, unknown>;
  requestId?: string | null;
}

/**
 * The master audit log's one writer. It takes the change's own transaction: the row and the change it
 * records commit together or not at all, so the log never tells of a change that did not happen, nor misses one.
 */
export async function audit(master: MasterDb, t: Transaction, entry: AuditEntry): Promise<void> {
  await master.models.AuditLog.create(entry, { transaction: t });
}

/**
 * An event that changes nothing in the master DB (a login, a failed one), recorded on its own: there is no
 * change for it to commit with.
 */
export async function auditEvent(master: MasterDb, entry: AuditEntry): Promise<void> {
  await master.models.AuditLog.create(entry);
}
