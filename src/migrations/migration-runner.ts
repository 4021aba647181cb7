import { randomUUID } from 'node:crypto';
import type { Job } from 'bullmq';
import pg from 'pg';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { migrateFromRecord, migrateWith } from '../db/migrate';
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
 * This is the one entry point for migrating a single store: it is the hook for migrating a store on demand (its
 * first request, a resume or restore); fleet runs do the same per claimed row (migrateOpen, recordOutcomes),
 * recording many stores per statement.
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
  // Every instance holds this store's requests until "migrated" (up to 2 s, then 503 TENANT_MIGRATING).
  await announce(deps, { type: 'tenant.migrating', storeId });
  const done = await migrateOpen(deps, storeId, row, target, dir, started);
  try {
    await recordOutcomes(deps, null, [done]);
    return done.outcome;
  } catch (err) {
    const error = (err as Error).message.slice(0, 500);
    logger.warn({ storeId, err: error }, 'could not record a migration');
    return { ...done.outcome, outcome: 'failed', ms: Date.now() - started, error };
  } finally {
    await done.client?.end().catch(() => {});
    await announce(deps, { type: 'tenant.migrated', storeId });
  }
}

/** A store's migration, finished: what to record, and its connection, still holding the store's lock until recorded. */
interface Finished {
  storeId: string;
  outcome: StoreOutcome;
  /** Its database was tried: its version (null: unknown, keep the record's) and error go to store_databases. */
  tried: boolean;
  version: number | null;
  client?: pg.Client;
}

async function connect(config: pg.ClientConfig): Promise<pg.Client> {
  const client = new pg.Client(config);
  // A lost connection also fails the pending query; unheard, the 'error' event would crash the process.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => {});
    throw err;
  }
  return client;
}

/**
 * Migrate one store over a connection of its own, under the per-store lock, and leave both open: the caller
 * records the outcome, then ends the connection (which frees the lock), so a session that is gone always means
 * a store whose outcome is either recorded or still to be read from its database. The common case is two round
 * trips after connecting (migrateFromRecord: the locks and the migrations table, checked against the master's
 * record; then the files); a database that differs from its record goes through postgres-migrations, which
 * reads and validates its table itself.
 */
async function migrateOpen(
  deps: RunnerDeps,
  storeId: string,
  row: StoreDatabaseRow,
  target: number,
  dir: string,
  started: number,
): Promise<Finished> {
  let client: pg.Client | undefined;
  let fromVersion: number | null = null;
  let reached: number | null = null;
  try {
    client = await connect(connectionOf(deps, storeId, row));
    fromVersion = row.schemaVersion;
    let result = await migrateFromRecord(client, dir, row.schemaVersion, STORE_LOCK);
    if (!result) {
      // Taken again (a session's advisory locks stack): the shortcut may have returned before taking it.
      await client.query(`SELECT pg_advisory_lock(${STORE_LOCK})`);
      fromVersion = await databaseVersion(client);
      result = await migrateWith('tenant', client, dir);
    }
    reached = result.schemaVersion;
    // The record follows the database's own table, not what the runner believes it applied.
    if (result.schemaVersion < target)
      throw new Error(`the database is at version ${result.schemaVersion} after migrating, not ${target}`);
    const outcome = result.applied.length ? 'migrated' : 'skipped';
    return {
      storeId,
      outcome: { outcome, fromVersion, toVersion: result.schemaVersion, ms: Date.now() - started },
      tried: true,
      version: result.schemaVersion,
      client,
    };
  } catch (err) {
    const error = (err as Error).message.slice(0, 500);
    logger.warn({ storeId, err: error }, 'tenant migration failed');
    const version = reached ?? fromVersion;
    return {
      storeId,
      outcome: { outcome: 'failed', fromVersion, toVersion: version, ms: Date.now() - started, error },
      tried: true,
      version,
      client,
    };
  }
}

/**
 * Stores' outcomes in one statement: store_databases (schema_version, migration_error) for those whose
 * database was tried, and, in a run, their rows while still this driver's claims (a stopped run's rows are
 * recorded too).
 */
async function recordOutcomes(
  deps: RunnerDeps,
  run: { runId: string; driver: string } | null,
  done: Finished[],
): Promise<void> {
  const column = <T>(f: (d: Finished) => T) => done.map(f);
  await deps.master.sequelize.query(
    `WITH o AS (
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[], $5::int[], $6::text[], $7::boolean[], $8::int[])
         AS o(store_id, outcome, from_version, to_version, ms, error, tried, version)
     ), versions AS (
       UPDATE store_databases d SET schema_version = coalesce(o.version, d.schema_version), migration_error = o.error, updated_at = now()
         FROM o WHERE o.tried AND d.store_id = o.store_id
     )
     UPDATE migration_run_stores m SET state = o.outcome, from_version = coalesce(o.from_version, m.from_version), to_version = o.to_version,
            ms = o.ms, error = o.error, finished_at = now()
       FROM o WHERE m.run_id = $9::uuid AND m.store_id = o.store_id AND m.state = 'running' AND m.claimed_by = $10`,
    {
      bind: [
        column((d) => d.storeId),
        column((d) => d.outcome.outcome),
        column((d) => d.outcome.fromVersion),
        column((d) => d.outcome.toVersion),
        column((d) => d.outcome.ms),
        column((d) => d.outcome.error ?? null),
        column((d) => d.tried),
        column((d) => d.version),
        run?.runId ?? null,
        run?.driver ?? null,
      ],
    },
  );
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
  /** The store's database row, read with the claim (null without one). */
  credentials: string | null;
  mode: string | null;
  schemaVersion: number | null;
}

interface DriverTally {
  done: number;
  migrated: number;
  failures: { storeId: string; error: string }[];
}

const RUNNABLE: readonly RunState[] = ['canary', 'running'];
/** How often a driver looks again at the run's state (a pause, a stop) and at claims that are not its own. */
const RECHECK_MS = 1000;
/** Until `woken` or `ms` have passed, whichever comes first (the timer cleared: a turn per store leaves none behind). */
async function wakeOrSleep(woken: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([woken, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/**
 * The tenant-migrations job: drive one run from its rows until it is finished, paused or stopped. Each
 * server migrates at most `perServer` stores at once (claims are made under the run row's lock, counting the
 * stores running there, so two drivers together keep the bound too), servers side by side. Returns what this
 * driver did (the metrics count it per store).
 *
 * The master's work is per batch, not per store: each turn records every store finished since the last (one
 * statement), then claims as many as the bound frees (one transaction, the stores' database rows with them).
 * A store stays `running`, its session and lock open, until its outcome is recorded.
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
  const finished: Finished[] = [];
  let wake = () => {};
  let failedSinceLook = false;
  /** Sessions being ended and "migrated" messages being sent: the next batch is recorded meanwhile. */
  const closing = new Set<Promise<void>>();
  const close = (batch: Finished[]) => {
    const done = Promise.all(
      batch.map(async (d) => {
        await d.client?.end().catch(() => {});
        if (d.tried) await announce(deps, { type: 'tenant.migrated', storeId: d.storeId });
      }),
    ).then(() => void closing.delete(done));
    closing.add(done);
  };
  /** Records what finished, then ends those sessions (freeing their locks) and says so to every instance. */
  const flush = async (batch: Finished[]) => {
    try {
      await recordOutcomes(deps, { runId, driver }, batch);
    } finally {
      close(batch);
    }
    for (const d of batch) {
      tally.done++;
      if (d.outcome.outcome === 'migrated') tally.migrated++;
      if (d.outcome.outcome === 'failed') {
        tally.failures.push({ storeId: d.storeId, error: d.outcome.error ?? '' });
        failedSinceLook = true;
      }
    }
  };
  // Group recording: a store is recorded as soon as it finishes, with whatever else finished while the
  // previous statement ran — one statement per batch, and no store waits for the driver's turn.
  let flushing: Promise<void> | undefined;
  let flushError: unknown;
  const flushSoon = () => {
    flushing ??= (async () => {
      try {
        while (finished.length && flushError === undefined) await flush(finished.splice(0));
      } catch (err) {
        flushError = err;
      } finally {
        flushing = undefined;
        wake();
      }
    })();
  };
  let recheckedAt = 0;
  let state: RunState = head.state;
  let claimed: ClaimedRow[] = [];
  try {
    for (;;) {
      const woken = new Promise<void>((resolve) => (wake = resolve));
      if (flushError !== undefined) throw flushError;
      // The run's state is read again (a scan of its rows) only when it can have changed: stores failed, a
      // claim found nothing (the canaries done, the run done, paused or stopped), or a while has passed.
      let stale = failedSinceLook || claimed.length === 0;
      failedSinceLook = false;
      if (Date.now() - recheckedAt >= RECHECK_MS) {
        await recoverClaims(deps, runId, driver, [...inflight.keys()], target);
        recheckedAt = Date.now();
        stale = true;
      }
      if (stale) state = await advance(deps, runId);
      claimed = [];
      if (RUNNABLE.includes(state) && !signal?.aborted) claimed = await claim(deps, runId, driver, state === 'canary');
      for (const row of claimed) {
        const work = migrateClaimed(deps, row, target, dir).then((done) => {
          finished.push(done);
          inflight.delete(row.storeId);
          flushSoon();
        });
        inflight.set(row.storeId, work);
      }
      const idle = inflight.size === 0 && finished.length === 0 && !flushing;
      if (idle && !RUNNABLE.includes(state)) break;
      // Another worker (or this one restarted) takes the run over from its rows.
      if (idle && signal?.aborted) throw new Error('the worker is shutting down: the run is handed over');
      // Wake up when stores are recorded (their slots free), or in a while to see a pause, a stop, or another
      // driver's claims.
      await wakeOrSleep(woken, inflight.size ? RECHECK_MS : RECHECK_MS / 4);
    }
  } finally {
    // Leaving on an error (the master gone): the stores under way end, their sessions close unrecorded (their
    // rows stay `running` under this claim: the next driver reads each one's outcome from its database).
    await Promise.allSettled(inflight.values());
    await flushing;
    close(finished.splice(0));
    await Promise.all(closing);
  }
  return tally;
}

/** One claimed store, from its claim row (which carries the store's database row): skipped, failed or migrated. */
async function migrateClaimed(deps: RunnerDeps, row: ClaimedRow, target: number, dir: string): Promise<Finished> {
  const started = Date.now();
  const { storeId } = row;
  if (row.credentials === null || row.mode === null || row.schemaVersion === null) {
    const outcome = {
      outcome: 'failed',
      fromVersion: null,
      toVersion: null,
      ms: 0,
      error: 'the store has no database',
    };
    return { storeId, outcome: outcome as StoreOutcome, tried: false, version: null };
  }
  if (row.schemaVersion >= target) {
    const outcome = { outcome: 'skipped', fromVersion: row.schemaVersion, toVersion: row.schemaVersion, ms: 0 };
    return { storeId, outcome: outcome as StoreOutcome, tried: false, version: null };
  }
  // Every instance holds this store's requests until "migrated" (up to 2 s, then 503 TENANT_MIGRATING).
  await announce(deps, { type: 'tenant.migrating', storeId });
  const database = { credentials: row.credentials, mode: row.mode, schemaVersion: row.schemaVersion };
  return migrateOpen(deps, storeId, database, target, dir, started);
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
         FROM next LEFT JOIN busy ON busy.server = next.server LEFT JOIN store_databases d ON d.store_id = next.store_id
        WHERE m.run_id = $1 AND m.store_id = next.store_id AND next.k <= $2 - coalesce(busy.n, 0)
       RETURNING m.store_id AS "storeId", m.server, m.claimed_by AS "claimedBy", m.from_version AS "fromVersion",
                 d.credentials, d.mode, d.schema_version AS "schemaVersion"`,
      { bind: [runId, run.perServer, canaryOnly, driver], type: QueryTypes.SELECT, transaction: t },
    );
  });
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
  const rows = await deps.master.sequelize.query<Pick<ClaimedRow, 'storeId' | 'server' | 'claimedBy' | 'fromVersion'>>(
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
