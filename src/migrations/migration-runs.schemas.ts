import { z } from 'zod';
import { registry } from '../http/openapi';
import { ListQuery, pageOf } from '../http/pagination';

const storeId = z.uuid();
const count = z.number().int().min(0);
const RunStateEnum = z.enum(['queued', 'canary', 'running', 'paused', 'stopped', 'completed', 'failed']);
const StoreStateEnum = z.enum(['pending', 'running', 'migrated', 'skipped', 'failed']);

/** POST /api/admin/tenants/migrate. */
export const RunOptions = z.strictObject({
  canary: z
    .union([z.number().int().min(0).max(1000), z.array(storeId).min(1).max(1000)])
    .optional()
    .describe(
      'Stores migrated first (a number: the oldest stores that need it; or a list); any canary failing fails the run',
    ),
  perServer: z
    .number()
    .int()
    .min(1)
    .max(64)
    .optional()
    .describe('Stores migrated at once on each tenant server (default 4); servers run in parallel'),
  maxFailures: z
    .number()
    .int()
    .min(0)
    .optional()
    .describe('The run stops (failed) once more stores than this have failed (default: no limit)'),
  stores: z
    .array(storeId)
    .min(1)
    .max(100_000)
    .optional()
    .describe('Only these stores (each must be active with a ready database)'),
  dryRun: z
    .boolean()
    .optional()
    .describe('Answer 200 with what would be applied to whom; nothing is changed or started'),
});
export type RunOptions = Omit<z.infer<typeof RunOptions>, 'dryRun'>;

export const RunStarted = z.object({ runId: z.uuid() });

export const DryRunPlan = registry.register(
  'MigrationDryRun',
  z.object({
    dryRun: z.literal(true),
    targetVersion: count,
    total: count.describe('stores the run would cover'),
    toMigrate: count,
    skipped: count.describe('already at the target version per the master records'),
    perServer: count,
    maxFailures: count.nullable(),
    canary: z.array(z.uuid()),
    stores: z.array(
      z.object({
        storeId: z.uuid(),
        server: z.string().describe('host:port of its tenant server, or external'),
        canary: z.boolean(),
        fromVersion: count,
        toVersion: count,
        migrations: z.array(z.string()).describe('the migration files that would be applied'),
      }),
    ),
  }),
);

export const RunIdParams = z.object({ runId: z.string().max(100) });

export const MigrationRun = registry.register(
  'MigrationRun',
  z.object({
    runId: z.uuid(),
    state: RunStateEnum,
    targetVersion: count,
    total: count,
    pending: count.describe('stores not finished yet (waiting or migrating)'),
    migrated: count,
    skipped: count.describe('already at the target version'),
    failed: count,
    startedAt: z.string().nullable(),
    finishedAt: z.string().nullable(),
    failures: z
      .array(z.object({ storeId: z.uuid(), error: z.string() }))
      .describe('the first 100 failed stores; all of them under …/stores?state=failed'),
  }),
);

export const RunStoresQuery = z.strictObject({ ...ListQuery.shape, state: StoreStateEnum.optional() });

export const MigrationRunStore = registry.register(
  'MigrationRunStore',
  z.object({
    storeId: z.uuid(),
    state: StoreStateEnum,
    fromVersion: count.nullable(),
    toVersion: count.nullable(),
    ms: count.nullable().describe('how long its migration took'),
    error: z.string().nullable(),
  }),
);
export const MigrationRunStores = pageOf(MigrationRunStore);
