import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { decodeCursor, olderThan, toPage, type Page } from '../http/pagination';
import { requireStoreAccess } from '../stores/membership';
import type { AuditEntryDto, AuditFilters } from './audit.schemas';

/**
 * The master audit log as its readers see it: a store's owner and admins read their store's entries, platform
 * admins read everything. Newest first, keyset-paginated on (created_at, id).
 *
 * The writers record no secret (audit() callers pass ids, roles, amounts, reasons); as a second line, any
 * detail whose name or value looks like one (passwords, keys, tokens, connection strings) is shown redacted.
 */

const SECRET_NAME = /pass(word|wd)?|secret|token|credential|connection|dsn|authorization|cookie|private|api_?key|hash/i;
const SECRET_VALUE =
  /postgres(ql)?:\/\/|\b(sk|rk)_(live|test)_|\bwhsec_|\beyJ[\w-]+\.[\w-]+\.|\$argon2|\$2[aby]\$|\$scrypt/i;
const REDACTED = '[redacted]';

function redact(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return SECRET_VALUE.test(value) ? REDACTED : value;
  if (Array.isArray(value)) return depth > 5 ? REDACTED : value.map((v) => redact(v, depth + 1));
  if (value && typeof value === 'object') {
    if (depth > 5) return REDACTED;
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, SECRET_NAME.test(k) ? REDACTED : redact(v, depth + 1)]),
    );
  }
  return value;
}

interface AuditRow {
  id: string;
  cursorTs: string;
  at: Date;
  actorId: string | null;
  actorEmail: string | null;
  actorVisible: boolean;
  action: string;
  targetType: string | null;
  targetId: string | null;
  storeId: string | null;
  data: Record<string, unknown> | null;
  requestId: string | null;
}

const toEntry = (r: AuditRow): AuditEntryDto => ({
  id: r.id,
  at: new Date(r.at).toISOString(),
  actor: r.actorId ? { id: r.actorId, email: r.actorVisible ? r.actorEmail : null } : null,
  action: r.action,
  target: { type: r.targetType, id: r.targetId },
  storeId: r.storeId,
  detail: (redact(r.data ?? {}) as Record<string, unknown>) ?? {},
  requestId: r.requestId,
});

/**
 * One page of entries matching `filters`. In a store's trail (`viewer.storeId`), the e-mail of an actor who is
 * not a member of that store (platform staff) is not shown.
 */
async function listAudit(
  ctx: AppContext,
  filters: AuditFilters,
  page: { limit: number; cursor?: string },
  viewer: { storeId: string | null },
): Promise<Page<AuditEntryDto>> {
  const after = decodeCursor(page.cursor, 'bigint');
  const values: unknown[] = [page.limit + 1];
  const where: string[] = [];
  const bind = (value: unknown) => {
    values.push(value);
    return `$${values.length}`;
  };
  if (filters.storeId) where.push(`a.store_id = ${bind(filters.storeId)}::uuid`);
  if (filters.actorId) where.push(`a.actor_user_id = ${bind(filters.actorId)}::uuid`);
  if (filters.action?.endsWith('.*')) where.push(`starts_with(a.action, ${bind(filters.action.slice(0, -1))}::text)`);
  else if (filters.action) where.push(`a.action = ${bind(filters.action)}::text`);
  if (filters.from) where.push(`a.created_at >= ${bind(filters.from.toISOString())}::timestamptz`);
  if (filters.to) where.push(`a.created_at < ${bind(filters.to.toISOString())}::timestamptz`);
  if (after) where.push(olderThan('a', after, values, 'bigint'));
  const visible = viewer.storeId
    ? `EXISTS (SELECT 1 FROM store_members m WHERE m.store_id = ${bind(viewer.storeId)}::uuid AND m.user_id = a.actor_user_id)`
    : 'true';
  const rows = await ctx.master.sequelize.query<AuditRow>(
    `SELECT a.id::text AS id, a.created_at::text AS "cursorTs", a.created_at AS at,
            a.actor_user_id AS "actorId", u.email AS "actorEmail", ${visible} AS "actorVisible",
            a.action, a.target_type AS "targetType", a.target_id AS "targetId", a.store_id AS "storeId",
            a.data, a.request_id AS "requestId"
       FROM audit_log a LEFT JOIN users u ON u.id = a.actor_user_id
      ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY a.created_at DESC, a.id DESC
      LIMIT $1::int`,
    { bind: values, type: QueryTypes.SELECT },
  );
  return toPage(rows, page.limit, toEntry);
}

/** A store's audit trail, for its owner and admins (a deleted store's too, while it can be restored). */
export async function storeAuditTrail(
  ctx: AppContext,
  userId: string,
  storeId: string,
  query: { limit: number; cursor?: string } & Omit<AuditFilters, 'storeId' | 'actorId'>,
) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { allowDeleted: true });
  const { limit, cursor, ...filters } = query;
  return listAudit(ctx, { ...filters, storeId }, { limit, cursor }, { storeId });
}

/** Every audit entry (platform admins). */
export async function platformAuditTrail(ctx: AppContext, query: { limit: number; cursor?: string } & AuditFilters) {
  const { limit, cursor, ...filters } = query;
  return listAudit(ctx, filters, { limit, cursor }, { storeId: null });
}
