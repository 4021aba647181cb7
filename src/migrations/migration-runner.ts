import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import pg from 'pg';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { migrateWith } from '../db/migrate';
import { withClient } from '../db/pg-client';
import type { TenantConnection } from '../db/tenant-types';
import type { BusEvent } from '../lib/bus';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import type { JobPayloads } from '../queue/queues';
import { externalAccess, tenantPgConfig } from '../provisioning/tenant-db';
import { fleetTargetVersion, tenantMigrationsDir, type RunState } from './migration-runs.service';

/** What migrating stores needs (the master, the credentials' key, the configuration): the process's context. */
export type RunnerDeps = AppContext;

/**
 * The per-store lock, taken in the store's own database by the session that migrates it: a database holds one
 * store, so one key serves every database, and the lock ends with that session — a worker that dies frees it
 * at once, a live one holds it until its store is recorded.
 */
const STORE_LOCK = '7245, 1';

export interface StoreOutcome {
  outcome: 'migrated' | 'skipped' | 'failed';
  fromVersion: number | null;
  toVersion: number | null;
  ms: number;
  error?: string;
}

/** The version the database's own migrations table says (0 before its first migration). */
async function databaseVersion(client: pg.ClientBase): Promise<number> {
  // Two statements: a query naming a table that does not exist fails when planned, whatever its CASE says.
  const { rows } = await client.query<{ table: string | null }>(`SELECT to_regclass('migrations')::text AS table`);
  if (!rows[0].table) return 0;
  return (await client.query<{ v: number }>('SELECT coalesce(max(id), 0)::int AS v FROM migrations')).rows[0].v;
}

interface StoreDatabaseRow {
  credentials: string;
  mode: string;
  schemaVersion: number;
}

async function storeDatabase(deps: RunnerDeps, storeId: string): Promise<StoreDatabaseRow | undefined> {
  const [row] = await deps.master.sequelize.query<StoreDatabaseRow>(
    `SELECT credentials, mode, schema_version AS "schemaVersion" FROM store_databases WHERE store_id = $1`,
    { bind: [storeId], type: QueryTypes.SELECT },
  );
  return row;
}

function connectionOf(deps: RunnerDeps, storeId: string, row: StoreDatabaseRow): pg.ClientConfig {
  const connection = deps.encryptor.decryptJson<TenantConnection>(
    row.credentials,
    secretContext.storeCredentials(storeId),
  );
  return tenantPgConfig(connection, externalAccess(deps, row.mode));
}

/**
 * Bring one store's database to `targetVersion` (default: the fleet's) under the per-store lock, verify the
 * result against the database's own `migrations` table and record it in store_databases (schema_version,
 * migration_error). A store at the target per the master's records is skipped without a connection; one whose
 * lock another session holds is waited for (it is being migrated: the migrations table then says it is done).
 * Never throws for the store's own failures: they come back as `failed`.
 *
 * This is the one entry point for migrating a store: fleet runs call it per claimed row, and it is the hook
 * for migrating a store on demand (its first request, a resume or restore).
 */
export async function migrateStore(
  deps: RunnerDeps,
  storeId: string,
  opts: { targetVersion?: number; dir?: string } = {},
): Promise<StoreOutcome> {
  const started = Date.now();
  const target = opts.targetVersion ?? fleetTargetVersion(deps.config);
  const dir = opts.dir ?? tenantMigrationsDir(deps.config);
  const row = await storeDatabase(deps, storeId);
  if (!row) return { outcome: 'failed', fromVersion: null, toVersion: null, ms: 0, error: 'the store has no database' };
  if (row.schemaVersion >= target)
    return { outcome: 'skipped', fromVersion: row.schemaVersion, toVersion: row.schemaVersion, ms: 0 };
  let fromVersion: number | null = null;
  let reached: number | null = null;
  // Every instance holds this store's requests until "migrated" (up to 2 s, then 503 TENANT_MIGRATING).
  await announce(deps, { type: 'tenant.migrating', storeId });
  try {
    const result = await withClient(connectionOf(deps, storeId, row), async (client) => {
      await client.query(`SELECT pg_advisory_lock(${STORE_LOCK})`);
      fromVersion = await databaseVersion(client);
      const { applied, schemaVersion } = await migrateWith('tenant', client, dir);
      reached = schemaVersion;
      // The record follows the database's own table, not what the runner believes it applied.
      if (schemaVersion < target)
        throw new Error(`the database is at version ${schemaVersion} after migrating, not ${target}`);
      await recordVersion(deps, storeId, schemaVersion, null);
      await client.query(`SELECT pg_advisory_unlock(${STORE_LOCK})`);
      return { applied, schemaVersion };
    });
    return {
      outcome: result.applied.length ? 'migrated' : 'skipped',
      fromVersion,
      toVersion: result.schemaVersion,
      ms: Date.now() - started,
    };
  } catch (err) {
    const error = (err as Error).message.slice(0, 500);
    logger.warn({ storeId, err: error }, 'tenant migration failed');
    await recordVersion(deps, storeId, reached ?? fromVersion, error).catch((e: Error) =>
      logger.warn({ storeId, err: e.message }, 'could not record a failed migration'),
    );
    return { outcome: 'failed', fromVersion, toVersion: reached ?? fromVersion, ms: Date.now() - started, error };
  } finally {
    await announce(deps, { type: 'tenant.migrated', storeId });
  }
}

/** A bus message about a store's migration; lost ones are covered (the marks expire, the master has the rows). */
async function announce(deps: RunnerDeps, event: BusEvent): Promise<void> {
  await deps.bus
    .publish(event)
    .catch((err: Error) => logger.warn({ err: err.message, event: event.type }, 'could not announce a migration'));
}

/**
 * A store coming back (resumed, restored) is brought to the fleet's version before its first request. Bounded:
 * migrateStore waits without bound for a store another session migrates; past `timeoutMs` the migration goes
 * on, and the store's first requests wait for it or answer 503 TENANT_MIGRATING (the ConnectionManager's
 * schema gate), so it is never served below the code's minimum either way.
 */
export async function migrateComingBack(
  deps: RunnerDeps,
  storeId: string,
  timeoutMs = 10_000,
): Promise<StoreOutcome | 'late'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
  const outcome = await Promise.race([migrateStore(deps, storeId), late]).finally(() => clearTimeout(timer));
  if (outcome === 'late') logger.warn({ storeId, timeoutMs }, 'a store coming back is still being migrated');
  return outcome;
}

async function recordVersion(
  deps: RunnerDeps,
  storeId: string,
  version: number | null,
  error: string | null,
): Promise<void> {
  await deps.master.sequelize.query(
    `UPDATE store_databases SET schema_version = coalesce($2::int, schema_version), migration_error = $3, updated_at = now() WHERE store_id = $1`,
    { bind: [storeId, version, error] },
  );
}

interface ClaimedRow {
  storeId: string;
  server: string;
  claimedBy: string | null;
  fromVersion: number | null;
}

interface DriverTally {
  done: number;
  migrated: number;
  failures: { storeId: string; error: string }[];
}

const RUNNABLE: readonly RunState[] = ['canary', 'running'];
/** How often a driver looks again at the run's state (a pause, a stop) and at claims that are not its own. */
const RECHECK_MS = 1000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The tenant-migrations job: drive one run from its rows until it is finished, paused or stopped. Each
 * server migrates at most `perServer` stores at once (claims are made under the run row's lock, counting the
 * stores running there, so two drivers together keep the bound too), servers side by side. Returns what this
 * driver did (the metrics count it per store).
 */
export async function processMigrationRun(
  deps: RunnerDeps,
  job: Job<JobPayloads['tenant-migrations']>,
  /** Aborted when the worker shuts down: no store is started any more, those migrating finish, the job fails to be retried. */
  signal?: AbortSignal,
): Promise<DriverTally> {
  const { runId } = job.data;
  const driver = `${job.id}:${job.attemptsMade}:${randomUUID().slice(0, 8)}`;
  const tally: DriverTally = { done: 0, migrated: 0, failures: [] };
  const head = await runHead(deps, runId);
  if (!head) return tally;
  const dir = tenantMigrationsDir(deps.config);
  const target = head.targetVersion;
  // A worker of an older deployment (a rolling deploy) leaves the run to one that has its migrations.
  const ours = fleetTargetVersion(deps.config);
  if (ours < target && !['stopped', 'completed', 'failed'].includes(head.state)) {
    throw new Error(`this worker's tenant migrations stop at version ${ours}; the run needs ${target}`);
  }
  tally.done += await start(deps, runId);

  const inflight = new Map<string, Promise<void>>();
  let recheckedAt = 0;
  for (;;) {
    if (Date.now() - recheckedAt >= RECHECK_MS) {
      await recoverClaims(deps, runId, driver, [...inflight.keys()], target);
      recheckedAt = Date.now();
    }
    const state = await advance(deps, runId);
    let claimed: ClaimedRow[] = [];
    if (RUNNABLE.includes(state) && !signal?.aborted) claimed = await claim(deps, runId, driver, state === 'canary');
    for (const row of claimed) {
      const work = migrateStore(deps, row.storeId, { targetVersion: target, dir })
        .then(async (result) => {
          await record(deps, runId, row.storeId, driver, result);
          tally.done++;
          if (result.outcome === 'migrated') tally.migrated++;
          if (result.outcome === 'failed') tally.failures.push({ storeId: row.storeId, error: result.error ?? '' });
        })
        .finally(() => inflight.delete(row.storeId));
      inflight.set(row.storeId, work);
    }
    if (inflight.size === 0 && !RUNNABLE.includes(state)) break;
    // Another worker (or this one restarted) takes the run over from its rows.
    if (inflight.size === 0 && signal?.aborted) throw new Error('the worker is shutting down: the run is handed over');
    // Wake up when a store finishes, or in a while to see a pause, a stop, or another driver's claims.
    await Promise.race([...inflight.values(), sleep(inflight.size ? RECHECK_MS : RECHECK_MS / 4)]);
  }
  return tally;
}

async function runHead(deps: RunnerDeps, runId: string) {
  const [row] = await deps.master.sequelize.query<{ state: RunState; targetVersion: number }>(
    `SELECT state, target_version AS "targetVersion" FROM migration_runs WHERE id = $1`,
    { bind: [runId], type: QueryTypes.SELECT },
  );
  return row;
}

/** queued → canary (when it has canaries to migrate) or running. Returns the rows skipped at creation (visited, unchanged). */
async function start(deps: RunnerDeps, runId: string): Promise<number> {
  const [[row]] = (await deps.master.sequelize.query(
    `WITH started AS (
       UPDATE migration_runs r SET started_at = now(), updated_at = now(),
              state = CASE WHEN EXISTS (SELECT 1 FROM migration_run_stores s WHERE s.run_id = r.id AND s.canary AND s.state = 'pending') THEN 'canary' ELSE 'running' END
        WHERE r.id = $1 AND r.state = 'queued' RETURNING r.id
     )
     SELECT (SELECT count(*) FROM migration_run_stores s, started WHERE s.run_id = started.id AND s.state = 'skipped')::int AS skipped`,
    { bind: [runId] },
  )) as unknown as [{ skipped: number }[]];
  return row?.skipped ?? 0;
}

interface Progress {
  state: RunState;
  maxFailures: number | null;
  canaryOpen: number;
  canaryFailed: number;
  open: number;
  failed: number;
  migrated: number;
  skipped: number;
}

/**
 * The run's next state from its rows, under the run row's lock: a failed canary fails the run; canaries done
 * → running; more failures than maxFailures fail it; nothing left → completed. Finishing is audited.
 */
async function advance(deps: RunnerDeps, runId: string): Promise<RunState> {
  return deps.master.sequelize.transaction(async (t) => {
    const [p] = await deps.master.sequelize.query<Progress>(
      `SELECT r.state, (r.options ->> 'maxFailures')::int AS "maxFailures",
              count(s.*) FILTER (WHERE s.canary AND s.state IN ('pending', 'running'))::int AS "canaryOpen",
              count(s.*) FILTER (WHERE s.canary AND s.state = 'failed')::int AS "canaryFailed",
              count(s.*) FILTER (WHERE s.state IN ('pending', 'running'))::int AS open,
              count(s.*) FILTER (WHERE s.state = 'failed')::int AS failed,
              count(s.*) FILTER (WHERE s.state = 'migrated')::int AS migrated,
              count(s.*) FILTER (WHERE s.state = 'skipped')::int AS skipped
         FROM (SELECT * FROM migration_runs WHERE id = $1 FOR UPDATE) r LEFT JOIN migration_run_stores s ON s.run_id = r.id
        GROUP BY r.state, r.options`,
      { bind: [runId], type: QueryTypes.SELECT, transaction: t },
    );
    if (!p) return 'stopped';
    let next: RunState = p.state;
    let reason: string | null = null;
    if (next === 'canary') {
      if (p.canaryFailed > 0) [next, reason] = ['failed', `${p.canaryFailed} canary store(s) failed`];
      else if (p.canaryOpen === 0) next = 'running';
    }
    if (next === 'running') {
      if (p.maxFailures !== null && p.failed > p.maxFailures)
        [next, reason] = ['failed', `${p.failed} stores failed, more than maxFailures (${p.maxFailures})`];
      else if (p.open === 0) next = 'completed';
    }
    if (next === p.state) return next;
    const finished = next === 'completed' || next === 'failed';
    await deps.master.sequelize.query(
      `UPDATE migration_runs SET state = $2, reason = coalesce($3, reason), updated_at = now(), finished_at = CASE WHEN $4 THEN now() ELSE finished_at END WHERE id = $1`,
      { bind: [runId, next, reason, finished], transaction: t },
    );
    if (finished) {
      await audit(deps.master, t, {
        actorUserId: null,
        action: 'migration_run.finished',
        targetType: 'migration_run',
        targetId: runId,
        data: { state: next, reason, migrated: p.migrated, skipped: p.skipped, failed: p.failed, pending: p.open },
      });
      logger.info(
        { runId, state: next, reason, migrated: p.migrated, skipped: p.skipped, failed: p.failed },
        'migration run finished',
      );
    }
    return next;
  });
}

/** Claim the next stores, each server up to perServer running at once (canaries only while in canary). */
async function claim(deps: RunnerDeps, runId: string, driver: string, canaryOnly: boolean): Promise<ClaimedRow[]> {
  return deps.master.sequelize.transaction(async (t) => {
    const [run] = await deps.master.sequelize.query<{ state: RunState; perServer: number }>(
      `SELECT state, coalesce((options ->> 'perServer')::int, 4) AS "perServer" FROM migration_runs WHERE id = $1 FOR UPDATE`,
      { bind: [runId], type: QueryTypes.SELECT, transaction: t },
    );
    if (!run || run.state !== (canaryOnly ? 'canary' : 'running')) return [];
    return deps.master.sequelize.query<ClaimedRow>(
      `WITH busy AS (
         SELECT server, count(*)::int AS n FROM migration_run_stores WHERE run_id = $1 AND state = 'running' GROUP BY server
       ), next AS (
         SELECT s.store_id, s.server, row_number() OVER (PARTITION BY s.server ORDER BY s.canary DESC, s.position) AS k
           FROM migration_run_stores s WHERE s.run_id = $1 AND s.state = 'pending' AND (NOT $3 OR s.canary)
       )
       UPDATE migration_run_stores m SET state = 'running', attempt = m.attempt + 1, claimed_by = $4, started_at = now(), error = NULL
         FROM next LEFT JOIN busy ON busy.server = next.server
        WHERE m.run_id = $1 AND m.store_id = next.store_id AND next.k <= $2 - coalesce(busy.n, 0)
       RETURNING m.store_id AS "storeId", m.server, m.claimed_by AS "claimedBy", m.from_version AS "fromVersion"`,
      { bind: [runId, run.perServer, canaryOnly, driver], type: QueryTypes.SELECT, transaction: t },
    );
  });
}

/** A store's result in its row, while the row is still this driver's claim (a stopped run's rows are recorded too). */
async function record(
  deps: RunnerDeps,
  runId: string,
  storeId: string,
  driver: string,
  r: StoreOutcome,
): Promise<void> {
  await deps.master.sequelize.query(
    `UPDATE migration_run_stores SET state = $3, from_version = coalesce($4::int, from_version), to_version = $5, ms = $6, error = $7, finished_at = now()
      WHERE run_id = $1 AND store_id = $2 AND state = 'running' AND claimed_by = $8`,
    { bind: [runId, storeId, r.outcome, r.fromVersion, r.toVersion, r.ms, r.error ?? null, driver] },
  );
}

/**
 * Rows `running` under another driver's claim — normally one whose worker died. Each is checked in its own
 * database: its lock still held → being migrated, left alone; free → its migrations table says whether the
 * migration went through (then it is recorded as migrated, never applied again) or not (back to pending, to
 * be claimed again). So no store is migrated twice, and none is left behind.
 */
async function recoverClaims(
  deps: RunnerDeps,
  runId: string,
  driver: string,
  mine: string[],
  target: number,
): Promise<void> {
  const rows = await deps.master.sequelize.query<ClaimedRow>(
    `SELECT store_id AS "storeId", server, claimed_by AS "claimedBy", from_version AS "fromVersion" FROM migration_run_stores
      WHERE run_id = $1 AND state = 'running' AND claimed_by IS DISTINCT FROM $2 AND NOT (store_id = ANY($3::uuid[])) LIMIT 100`,
    { bind: [runId, driver, mine], type: QueryTypes.SELECT },
  );
  for (const row of rows) {
    const db = await storeDatabase(deps, row.storeId);
    let verdict: { version: number } | 'busy' | 'unknown' = 'unknown';
    if (db) {
      verdict = await withClient(connectionOf(deps, row.storeId, db), async (client) => {
        const { rows: got } = await client.query<{ locked: boolean }>(
          `SELECT pg_try_advisory_lock(${STORE_LOCK}) AS locked`,
        );
        if (!got[0].locked) return 'busy' as const;
        return { version: await databaseVersion(client) };
      }).catch(() => 'unknown' as const);
    }
    if (verdict === 'busy') continue;
    if (verdict !== 'unknown' && verdict.version >= target) {
      await recordVersion(deps, row.storeId, verdict.version, null);
      await deps.master.sequelize.query(
        `UPDATE migration_run_stores SET state = 'migrated', to_version = $4, finished_at = now()
          WHERE run_id = $1 AND store_id = $2 AND state = 'running' AND claimed_by IS NOT DISTINCT FROM $3`,
        { bind: [runId, row.storeId, row.claimedBy, verdict.version] },
      );
      logger.info(
        { runId, storeId: row.storeId, version: verdict.version },
        'a claim whose worker died had migrated its store: recorded',
      );
    } else {
      await deps.master.sequelize.query(
        `UPDATE migration_run_stores SET state = 'pending', claimed_by = NULL WHERE run_id = $1 AND store_id = $2 AND state = 'running' AND claimed_by IS NOT DISTINCT FROM $3`,
        { bind: [runId, row.storeId, row.claimedBy] },
      );
      logger.info({ runId, storeId: row.storeId }, 'a claim whose worker died is pending again');
    }
  }
}
