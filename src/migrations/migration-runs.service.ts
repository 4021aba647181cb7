import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { constraintOf, PgCode, pgCode } from '../db/errors';
import { latestSchemaVersion, migrationFiles, migrationsDir } from '../db/migrate';
import { decodeCursor, olderThan, toPage } from '../http/pagination';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { migrationRunJobOptions, QueueName } from '../queue/queues';
import type { RunOptions } from './migration-runs.schemas';

/**
 * Fleet migration runs, kept in the master DB (migration_runs, migration_run_stores): created, read, paused,
 * resumed and stopped here, by the API and the command line alike; driven by the queue job of
 * migration-runner.ts, which only ever works from these rows.
 */

/** What creating or steering a run needs: the command line has these without the rest of a context. */
export type FleetDeps = Pick<AppContext, 'master' | 'queues' | 'config'>;

/** Who asked: a platform user (audited as the actor), or the command line / a deploy (by label). */
export interface Actor {
  userId: string | null;
  label: string;
}

export const RUN_STATES = ['queued', 'canary', 'running', 'paused', 'stopped', 'completed', 'failed'] as const;
export type RunState = (typeof RUN_STATES)[number];
export const STORE_STATES = ['pending', 'running', 'migrated', 'skipped', 'failed'] as const;
export type StoreState = (typeof STORE_STATES)[number];
/** A run in one of these holds the one-active-run index. */
export const ACTIVE_STATES: readonly RunState[] = ['queued', 'canary', 'running', 'paused'];
export const FINAL_STATES: readonly RunState[] = ['stopped', 'completed', 'failed'];

/** Stores a server migrates at once when the request does not say. */
export const DEFAULT_PER_SERVER = 4;

/** The tenant migrations a run applies: TENANT_MIGRATIONS_DIR, else the code's sql/tenant. */
export const tenantMigrationsDir = (config: FleetDeps['config']): string =>
  config.fleetMigrations.dir ?? migrationsDir('tenant');
/** The version a run brings every store to: the newest file of those migrations. */
export const fleetTargetVersion = (config: FleetDeps['config']): number =>
  latestSchemaVersion('tenant', tenantMigrationsDir(config));
/**
 * The lowest tenant schema the running code serves (TENANT_MIN_SCHEMA; `latest`: the newest file of the code's
 * own sql/tenant, whatever TENANT_MIGRATIONS_DIR says). A store below it is migrated before it is served.
 */
export const minTenantSchema = (config: FleetDeps['config']): number =>
  config.fleetMigrations.minSchema === 'latest' ? latestSchemaVersion('tenant') : config.fleetMigrations.minSchema;

interface FleetStore {
  storeId: string;
  server: string;
  schemaVersion: number;
}

/** The stores a run covers: active, with a ready database (suspended and deleted ones are migrated when they come back). */
async function eligibleStores(deps: FleetDeps, only?: string[]): Promise<FleetStore[]> {
  return deps.master.sequelize.query<FleetStore>(
    `SELECT d.store_id AS "storeId", CASE WHEN d.mode = 'external' THEN 'external' ELSE d.server END AS server,
            d.schema_version AS "schemaVersion"
       FROM store_databases d JOIN stores s ON s.id = d.store_id
      WHERE s.status = 'active' AND d.status = 'ready' ${only ? 'AND d.store_id = ANY($1::uuid[])' : ''}
      ORDER BY s.created_at, s.id`,
    { bind: only ? [only] : [], type: QueryTypes.SELECT },
  );
}

interface PlannedStore extends FleetStore {
  canary: boolean;
  position: number;
  /** At the target per the master's records: skipped without a connection. */
  upToDate: boolean;
}

/** Which store goes when: canaries first (the oldest stores that need the migration, or the listed ones). */
async function planRun(deps: FleetDeps, options: RunOptions, target: number): Promise<PlannedStore[]> {
  const stores = await eligibleStores(deps, options.stores);
  if (options.stores) {
    const found = new Set(stores.map((s) => s.storeId));
    const missing = options.stores.filter((id) => !found.has(id));
    if (missing.length) {
      throw fail(ErrorCode.VALIDATION_FAILED, 'Some stores are not active stores with a ready database', {
        errors: missing.map((id) => ({
          path: `stores.${options.stores!.indexOf(id)}`,
          message: `${id} is not an active store with a ready database`,
        })),
      });
    }
  }
  const behind = stores.filter((s) => s.schemaVersion < target);
  let canaries: Set<string>;
  const listed = options.canary;
  if (Array.isArray(listed)) {
    const inRun = new Set(stores.map((s) => s.storeId));
    const outside = listed.filter((id) => !inRun.has(id));
    if (outside.length) {
      throw fail(ErrorCode.VALIDATION_FAILED, 'Canary stores must be stores of the run', {
        errors: outside.map((id) => ({
          path: `canary.${listed.indexOf(id)}`,
          message: `${id} is not an active store with a ready database of this run`,
        })),
      });
    }
    canaries = new Set(listed);
  } else {
    canaries = new Set(behind.slice(0, typeof listed === 'number' ? listed : 0).map((s) => s.storeId));
  }
  const positions = new Map<string, number>();
  return stores.map((s) => {
    const position = positions.get(s.server) ?? 0;
    positions.set(s.server, position + 1);
    return { ...s, canary: canaries.has(s.storeId), position, upToDate: s.schemaVersion >= target };
  });
}

/** POST …/migrate with dryRun: what a run would apply to whom, from the master's records; nothing changes. */
export async function dryRun(deps: FleetDeps, options: RunOptions) {
  const target = fleetTargetVersion(deps.config);
  const files = migrationFiles(tenantMigrationsDir(deps.config));
  const planned = await planRun(deps, options, target);
  const toMigrate = planned.filter((s) => !s.upToDate);
  return {
    dryRun: true as const,
    targetVersion: target,
    total: planned.length,
    toMigrate: toMigrate.length,
    skipped: planned.length - toMigrate.length,
    perServer: options.perServer ?? DEFAULT_PER_SERVER,
    maxFailures: options.maxFailures ?? null,
    canary: planned.filter((s) => s.canary).map((s) => s.storeId),
    stores: toMigrate.map((s) => ({
      storeId: s.storeId,
      server: s.server,
      canary: s.canary,
      fromVersion: s.schemaVersion,
      toVersion: target,
      migrations: files.filter((f) => f.version > s.schemaVersion).map((f) => f.fileName),
    })),
  };
}

async function activeRunId(deps: FleetDeps): Promise<string | undefined> {
  const [row] = await deps.master.sequelize.query<{ id: string }>(
    `SELECT id FROM migration_runs WHERE state = ANY($1::text[]) LIMIT 1`,
    {
      bind: [ACTIVE_STATES],
      type: QueryTypes.SELECT,
    },
  );
  return row?.id;
}

const runActive = (runId: string) =>
  fail(ErrorCode.MIGRATION_RUN_ACTIVE, `A migration run is active (${runId}): wait for it, or pause or stop it`, {
    members: { runId },
  });

/**
 * Create a run (state queued, one row per store; stores already at the target per the master's records are
 * `skipped` there and then) and enqueue its driver. One active run at a time: the partial unique index
 * decides between concurrent requests, the loser gets 409 MIGRATION_RUN_ACTIVE with the active run's id.
 */
export async function createRun(deps: FleetDeps, actor: Actor, options: RunOptions): Promise<{ runId: string }> {
  const target = fleetTargetVersion(deps.config);
  const active = await activeRunId(deps);
  if (active) throw runActive(active);
  const planned = await planRun(deps, options, target);
  let runId: string;
  try {
    runId = await deps.master.sequelize.transaction(async (t) => {
      const [row] = await deps.master.sequelize.query<{ id: string }>(
        `INSERT INTO migration_runs (target_version, options, requested_by) VALUES ($1, $2::jsonb, $3) RETURNING id`,
        {
          bind: [
            target,
            JSON.stringify({
              ...options,
              perServer: options.perServer ?? DEFAULT_PER_SERVER,
              maxFailures: options.maxFailures ?? null,
            }),
            actor.label,
          ],
          type: QueryTypes.SELECT,
          transaction: t,
        },
      );
      await deps.master.sequelize.query(
        `INSERT INTO migration_run_stores (run_id, store_id, server, canary, position, state, from_version, to_version, finished_at)
         SELECT $1, p.store_id, p.server, p.canary, p.position, CASE WHEN p.skip THEN 'skipped' ELSE 'pending' END, p.version,
                CASE WHEN p.skip THEN p.version END, CASE WHEN p.skip THEN now() END
           FROM unnest($2::uuid[], $3::text[], $4::bool[], $5::int[], $6::bool[], $7::int[]) AS p (store_id, server, canary, position, skip, version)`,
        {
          bind: [
            row.id,
            planned.map((s) => s.storeId),
            planned.map((s) => s.server),
            planned.map((s) => s.canary),
            planned.map((s) => s.position),
            planned.map((s) => s.upToDate),
            planned.map((s) => s.schemaVersion),
          ],
          transaction: t,
        },
      );
      await audit(deps.master, t, {
        actorUserId: actor.userId,
        action: 'migration_run.started',
        targetType: 'migration_run',
        targetId: row.id,
        data: {
          by: actor.label,
          targetVersion: target,
          stores: planned.length,
          toMigrate: planned.filter((s) => !s.upToDate).length,
          options,
        },
      });
      return row.id;
    });
  } catch (err) {
    if (pgCode(err) === PgCode.UNIQUE_VIOLATION && constraintOf(err) === 'migration_runs_one_active') {
      const winner = await activeRunId(deps);
      if (winner) throw runActive(winner);
    }
    throw err;
  }
  await driveRun(deps, runId);
  return { runId };
}

/** Enqueue the run's driver (a no-op while one waits; one more after the active one, see migrationRunJobOptions). */
export async function driveRun(deps: FleetDeps, runId: string): Promise<void> {
  await deps.queues.get(QueueName.tenantMigrations).add('migration-run', { runId }, migrationRunJobOptions(runId));
}

/**
 * The maintenance sweep: an active run (not paused) whose driver is gone — its job failed for good, was
 * removed, or its worker died more often than BullMQ hands a stalled job over — gets a driver again.
 */
export async function resumeOrphanedRuns(deps: FleetDeps): Promise<{ resumed: number }> {
  const runs = await deps.master.sequelize.query<{ id: string }>(
    `SELECT id FROM migration_runs WHERE state IN ('queued', 'canary', 'running')`,
    {
      type: QueryTypes.SELECT,
    },
  );
  const queue = deps.queues.get(QueueName.tenantMigrations);
  let resumed = 0;
  for (const { id } of runs) {
    const jobId = await queue.getDeduplicationJobId(`migration-run-${id}`);
    const job = jobId ? await queue.getJob(jobId) : undefined;
    const state = job ? await job.getState() : 'unknown';
    if (['active', 'waiting', 'delayed', 'prioritized', 'waiting-children'].includes(state)) continue;
    logger.warn({ runId: id, jobId, jobState: state }, 'migration run without a live driver: enqueued again');
    await driveRun(deps, id);
    resumed++;
  }
  return { resumed };
}

interface RunRow {
  id: string;
  state: RunState;
  targetVersion: number;
  options: RunOptions & { perServer: number; maxFailures: number | null };
  reason: string | null;
  requestedBy: string;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  total: number;
  pending: number;
  running: number;
  migrated: number;
  skipped: number;
  failed: number;
}

const RUN_COLUMNS = `r.id, r.state, r.target_version AS "targetVersion", r.options, r.reason, r.requested_by AS "requestedBy",
  r.created_at AS "createdAt", r.started_at AS "startedAt", r.finished_at AS "finishedAt",
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id)::int AS total,
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id AND s.state IN ('pending', 'running'))::int AS pending,
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id AND s.state = 'running')::int AS running,
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id AND s.state = 'migrated')::int AS migrated,
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id AND s.state = 'skipped')::int AS skipped,
  (SELECT count(*) FROM migration_run_stores s WHERE s.run_id = r.id AND s.state = 'failed')::int AS failed`;

const iso = (d: Date | null) => (d ? new Date(d).toISOString() : null);
const isUuid = (s: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);
const noSuchRun = () => fail(ErrorCode.NOT_FOUND, 'No such migration run');

async function runRow(deps: FleetDeps, runId: string, t?: Transaction): Promise<RunRow> {
  if (!isUuid(runId)) throw noSuchRun();
  const [row] = await deps.master.sequelize.query<RunRow>(
    `SELECT ${RUN_COLUMNS} FROM migration_runs r WHERE r.id = $1`,
    {
      bind: [runId],
      type: QueryTypes.SELECT,
      transaction: t,
    },
  );
  if (!row) throw noSuchRun();
  return row;
}

/** Failures listed with a run (the rest are in …/stores?state=failed). */
const FAILURES_LISTED = 100;

/** GET …/migrate/:runId. */
export async function getRun(deps: FleetDeps, runId: string) {
  const r = await runRow(deps, runId);
  const failures = await deps.master.sequelize.query<{ storeId: string; error: string }>(
    `SELECT store_id AS "storeId", coalesce(error, '') AS error FROM migration_run_stores
      WHERE run_id = $1 AND state = 'failed' ORDER BY finished_at, store_id LIMIT ${FAILURES_LISTED}`,
    { bind: [runId], type: QueryTypes.SELECT },
  );
  return {
    runId: r.id,
    state: r.state,
    targetVersion: r.targetVersion,
    total: r.total,
    pending: r.pending,
    migrated: r.migrated,
    skipped: r.skipped,
    failed: r.failed,
    startedAt: iso(r.startedAt),
    finishedAt: iso(r.finishedAt),
    failures,
  };
}

/** The run as the command line shows it: the API's view and what only an operator's terminal needs. */
export async function runDetails(deps: FleetDeps, runId: string) {
  const r = await runRow(deps, runId);
  const servers = await deps.master.sequelize.query<{
    server: string;
    total: number;
    done: number;
    running: number;
    failed: number;
  }>(
    `SELECT server, count(*)::int AS total, count(*) FILTER (WHERE state IN ('migrated', 'skipped', 'failed'))::int AS done,
            count(*) FILTER (WHERE state = 'running')::int AS running, count(*) FILTER (WHERE state = 'failed')::int AS failed
       FROM migration_run_stores WHERE run_id = $1 GROUP BY server ORDER BY server`,
    { bind: [runId], type: QueryTypes.SELECT },
  );
  return { ...r, createdAt: iso(r.createdAt), startedAt: iso(r.startedAt), finishedAt: iso(r.finishedAt), servers };
}

/** Failed stores of a run finished after `since` (the command line prints them as they happen). */
export async function failuresSince(deps: FleetDeps, runId: string, since: Date) {
  return deps.master.sequelize.query<{ storeId: string; server: string; error: string; finishedAt: Date }>(
    `SELECT store_id AS "storeId", server, coalesce(error, '') AS error, finished_at AS "finishedAt" FROM migration_run_stores
      WHERE run_id = $1 AND state = 'failed' AND finished_at > $2 ORDER BY finished_at`,
    { bind: [runId, since], type: QueryTypes.SELECT },
  );
}

/** Runs, newest first (the command line's tenants:runs). */
export async function listRuns(deps: FleetDeps, limit = 20) {
  return deps.master.sequelize.query<RunRow>(
    `SELECT ${RUN_COLUMNS} FROM migration_runs r ORDER BY r.created_at DESC, r.id DESC LIMIT $1`,
    {
      bind: [limit],
      type: QueryTypes.SELECT,
    },
  );
}

interface RunStoreRow {
  id: string;
  cursorTs: string;
  state: StoreState;
  fromVersion: number | null;
  toVersion: number | null;
  ms: number | null;
  error: string | null;
}

/** GET …/migrate/:runId/stores?state=: per store, paged like every list (newest row first, then by store id). */
export async function listRunStores(
  deps: FleetDeps,
  runId: string,
  opts: { limit: number; cursor?: string; state?: StoreState },
) {
  await runRow(deps, runId);
  const after = decodeCursor(opts.cursor);
  const values: unknown[] = [opts.limit + 1, runId, opts.state ?? null];
  const rows = await deps.master.sequelize.query<RunStoreRow>(
    `SELECT m.id, m.created_at::text AS "cursorTs", m.state, m.from_version AS "fromVersion", m.to_version AS "toVersion", m.ms, m.error
       FROM (SELECT store_id AS id, * FROM migration_run_stores WHERE run_id = $2 AND ($3::text IS NULL OR state = $3)) m
      ${after ? `WHERE ${olderThan('m', after, values)}` : ''}
      ORDER BY m.created_at DESC, m.id DESC LIMIT $1::int`,
    { bind: values, type: QueryTypes.SELECT },
  );
  return toPage(rows, opts.limit, (r) => ({
    storeId: r.id,
    state: r.state,
    fromVersion: r.fromVersion,
    toVersion: r.toVersion,
    ms: r.ms,
    error: r.error,
  }));
}

export type RunAction = 'pause' | 'resume' | 'stop';
const ALLOWED_FROM: Record<RunAction, readonly RunState[]> = {
  pause: ['queued', 'canary', 'running'],
  resume: ['paused'],
  stop: ['queued', 'canary', 'running', 'paused'],
};

/**
 * Pause (no store is started any more; those migrating finish), resume (where it was: queued, canary or
 * running) or stop (for good; stores not started stay pending). 409 CONFLICT for a run in a state that does
 * not allow it.
 */
export async function changeRun(deps: FleetDeps, actor: Actor, runId: string, action: RunAction) {
  await deps.master.sequelize.transaction(async (t) => {
    if (!isUuid(runId)) throw noSuchRun();
    const [locked] = await deps.master.sequelize.query<{ state: RunState; startedAt: Date | null }>(
      `SELECT state, started_at AS "startedAt" FROM migration_runs WHERE id = $1 FOR UPDATE`,
      { bind: [runId], type: QueryTypes.SELECT, transaction: t },
    );
    if (!locked) throw noSuchRun();
    if (!ALLOWED_FROM[action].includes(locked.state))
      throw fail(
        ErrorCode.CONFLICT,
        `The run is ${locked.state}: it cannot be ${action === 'stop' ? 'stopped' : `${action}d`}`,
      );
    await deps.master.sequelize.query(
      `UPDATE migration_runs SET updated_at = now(),
              state = CASE $2
                WHEN 'pause' THEN 'paused'
                WHEN 'stop' THEN 'stopped'
                WHEN 'resume' THEN CASE
                  WHEN started_at IS NULL THEN 'queued'
                  -- Back through canary when it has canaries: one that failed while paused still fails the run.
                  WHEN EXISTS (SELECT 1 FROM migration_run_stores s WHERE s.run_id = $1 AND s.canary) THEN 'canary'
                  ELSE 'running' END
              END,
              finished_at = CASE WHEN $2 = 'stop' THEN now() ELSE finished_at END,
              reason = CASE WHEN $2 = 'stop' THEN $3 ELSE reason END
        WHERE id = $1`,
      { bind: [runId, action, `stopped by ${actor.label}`], transaction: t },
    );
    await audit(deps.master, t, {
      actorUserId: actor.userId,
      action: `migration_run.${action === 'stop' ? 'stopped' : `${action}d`}`,
      targetType: 'migration_run',
      targetId: runId,
      data: { by: actor.label, from: locked.state },
    });
  });
  if (action === 'resume') await driveRun(deps, runId);
  return getRun(deps, runId);
}

/**
 * TENANT_MIGRATE_ON_START: after the master is migrated, a run when the tenant migrations this code ships are
 * newer than the fleet — some store's database is behind them and no run has been made for this version yet
 * (a store that failed in that run is the operator's to retry: a crash-looping deploy does not hammer it).
 * Instances starting together race for the one-active-run index; the losers log.
 */
export async function startRunIfFleetBehind(deps: FleetDeps): Promise<{ runId: string } | undefined> {
  const target = fleetTargetVersion(deps.config);
  const [{ behind }] = await deps.master.sequelize.query<{ behind: number }>(
    `SELECT count(*)::int AS behind FROM store_databases d JOIN stores s ON s.id = d.store_id
      WHERE s.status = 'active' AND d.status = 'ready' AND d.schema_version < $1
        AND NOT EXISTS (SELECT 1 FROM migration_runs r WHERE r.target_version >= $1 AND r.state <> 'stopped')`,
    { bind: [target], type: QueryTypes.SELECT },
  );
  if (behind === 0) return undefined;
  try {
    const run = await createRun(deps, { userId: null, label: 'deploy' }, {});
    logger.info(
      { runId: run.runId, targetVersion: target, behind },
      'tenant migrations are newer than the fleet: migration run started',
    );
    return run;
  } catch (err) {
    if ((err as { code?: string }).code === ErrorCode.MIGRATION_RUN_ACTIVE) {
      logger.info(
        { behind, detail: (err as Error).message },
        'tenant migrations are newer than the fleet; a run is already active',
      );
      return undefined;
    }
    throw err;
  }
}

/** Every store with its database's schema version and last migration error (the command line's tenants:list). */
export async function fleetStores(deps: FleetDeps) {
  return deps.master.sequelize.query<{
    storeId: string;
    slug: string;
    status: string;
    server: string | null;
    dbStatus: string | null;
    schemaVersion: number | null;
    migrationError: string | null;
  }>(
    `SELECT s.id AS "storeId", s.slug, s.status, CASE WHEN d.mode = 'external' THEN 'external' ELSE d.server END AS server,
            d.status AS "dbStatus", d.schema_version AS "schemaVersion", d.migration_error AS "migrationError"
       FROM stores s LEFT JOIN store_databases d ON d.store_id = s.id ORDER BY s.created_at, s.id`,
    { type: QueryTypes.SELECT },
  );
}
