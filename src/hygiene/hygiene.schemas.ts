import { z } from 'zod';
import { registry } from '../http/openapi';
import { DRIFT_KINDS } from './drift';
import { RECONCILE_KINDS } from './reconcile';

const count = z.number().int().min(0);

/** GET /api/admin/tenants/drift. */
export const DriftQuery = z.strictObject({
  perServer: z.coerce
    .number()
    .int()
    .min(1)
    .max(64)
    .optional()
    .describe('Store databases compared at once on each tenant server (default 8); servers run in parallel'),
  resume: z
    .uuid()
    .optional()
    .describe('Resume this check: only its stores not compared yet are, the others keep their results'),
});

export const DriftReport = registry.register(
  'DriftReport',
  z.object({
    checkId: z.uuid().describe('the check, kept in the master DB (resume it with ?resume=)'),
    targetVersion: count.describe('the newest tenant migration of this code'),
    checked: count.describe('store databases compared'),
    differing: count.describe('stores with at least one item'),
    ms: count,
    items: z
      .array(
        z.object({
          storeId: z.uuid(),
          kind: z.enum(DRIFT_KINDS),
          detail: z.string().describe('what differs, in words (`index products_extra_idx not in the schema`)'),
        }),
      )
      .describe('one per difference, for each store whose database differs from what the code expects'),
  }),
);

/** POST /api/admin/tenants/reconcile. */
export const ReconcileBody = z.strictObject({
  apply: z.boolean().optional().describe('Make the safe repairs (default: a dry run, nothing changes)'),
  dropOrphans: z
    .boolean()
    .optional()
    .describe('With apply: also drop orphaned databases (and their roles); each drop is audited'),
  graceMinutes: z
    .number()
    .int()
    .min(0)
    .max(100_000)
    .optional()
    .describe('Databases younger than this are not orphans, stores provisioning for less are not stuck (default 60)'),
});

const ReconcileKind = z.enum(RECONCILE_KINDS);

export const ReconcileReport = registry.register(
  'ReconcileReport',
  z.object({
    applied: z.boolean(),
    dropOrphans: z.boolean(),
    graceMinutes: count,
    prefix: z.string().describe('TENANT_DB_PREFIX: only databases and roles named with it are this deployment’s'),
    servers: z.array(z.object({ server: z.string(), reachable: z.boolean(), databases: count, roles: count })),
    counts: z.record(ReconcileKind, count),
    findings: z.array(
      z.object({
        kind: ReconcileKind,
        server: z.string().describe('host:port of the tenant server (external for an external store)'),
        name: z.string().describe('the database, role or store'),
        storeId: z.uuid().nullable(),
        detail: z.string(),
        repair: z.string().nullable().describe('what apply does about it (null: report only)'),
        repaired: z.boolean(),
        error: z.string().optional().describe('why it was not repaired, when apply was asked'),
      }),
    ),
    repairs: z
      .array(z.object({ kind: ReconcileKind, server: z.string(), name: z.string(), action: z.string() }))
      .describe('what this call repaired'),
    kept: z
      .array(
        z.object({
          server: z.string(),
          name: z.string(),
          storeId: z.uuid(),
          until: z.string().describe('when the retention drops it (ISO 8601)'),
        }),
      )
      .describe('databases a restore replaced, kept (closed to connections) until their drop date: not orphans'),
  }),
);
