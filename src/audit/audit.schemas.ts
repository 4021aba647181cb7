import { z } from 'zod';
import { registry } from '../http/openapi';
import { ListQuery, pageOf } from '../http/pagination';
import { Uuid } from '../http/schemas';

/** A point in time: a UTC day (`2026-11-30`, its start) or an ISO-8601 timestamp with its offset. */
const Instant = z
  .string()
  .max(40)
  .refine(
    (v) => z.iso.date().safeParse(v).success || z.iso.datetime({ offset: true }).safeParse(v).success,
    'must be an ISO-8601 date (2026-11-30) or timestamp with its offset (2026-11-30T12:00:00Z)',
  )
  .transform((v) => new Date(v.length === 10 ? `${v}T00:00:00Z` : v));

const auditFilters = {
  action: z
    .string()
    .regex(
      /^[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?$/,
      'must be an action (`store.suspended`) or a family of them (`credits.*`)',
    )
    .max(100)
    .optional()
    .describe('Only this action (`store.suspended`), or every action of a family (`credits.*`, `auth.*`)'),
  from: Instant.optional().describe('Only entries at or after this time (a date means its start, UTC)'),
  to: Instant.optional().describe('Only entries before this time (a date means its start, UTC)'),
};

const fromBeforeTo = (q: { from?: Date; to?: Date }) => !q.from || !q.to || q.from <= q.to;
const FROM_BEFORE_TO = { message: 'must not be after `to`', path: ['from'] };

export const StoreAuditQuery = ListQuery.extend(auditFilters).refine(fromBeforeTo, FROM_BEFORE_TO);
export const AdminAuditQuery = ListQuery.extend({
  ...auditFilters,
  storeId: Uuid.optional().describe("Only this store's entries"),
  actorId: Uuid.optional().describe("Only this platform user's actions"),
}).refine(fromBeforeTo, FROM_BEFORE_TO);

export type AuditFilters = Omit<z.infer<typeof AdminAuditQuery>, 'limit' | 'cursor'>;

export const AuditEntryDto = registry.register(
  'AuditEntry',
  z.object({
    id: z.string().describe('Increasing with time'),
    at: z.iso.datetime(),
    actor: z
      .object({
        id: Uuid,
        email: z
          .string()
          .nullable()
          .describe("The platform user's e-mail; null in a store's trail for someone not a member (platform staff)"),
      })
      .nullable()
      .describe(
        'The platform user who acted; null when the platform did (a job, the command line, the payment provider) or nobody known did (a failed login)',
      ),
    action: z.string().describe('What happened, e.g. `auth.login.failed`, `store.suspended`, `credits.spend`'),
    target: z.object({ type: z.string().nullable(), id: z.string().nullable() }).describe('What it happened to'),
    storeId: Uuid.nullable(),
    detail: z.record(z.string(), z.unknown()).describe('What else the entry records; never secrets'),
    requestId: z.string().nullable().describe('The X-Request-Id of the request that made the change'),
  }),
);
export type AuditEntryDto = z.infer<typeof AuditEntryDto>;

export const AuditPageDto = registry.register('AuditPage', pageOf(AuditEntryDto));
