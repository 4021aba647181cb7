import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { createDatabaseAt } from '../backups/backups.service';
import {
  copyIn,
  copyOut,
  inSnapshot,
  listTenantSequences,
  listTenantTables,
  tenantSchemaVersion,
} from '../backups/tenant-tables';
import { audit } from '../db/audit';
import { pgCode, PgCode } from '../db/errors';
import { withClient } from '../db/pg-client';
import type { TenantConnection } from '../db/tenant-handle';
import { ident, loginRoleSql } from '../db/tenant-server-admin';
import { serverByKey, type TenantServer } from '../db/tenant-servers';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import { Semaphore } from '../lib/semaphore';
import { fleetTargetVersion } from '../migrations/migration-runs.service';
import { QueueName } from '../queue/queues';
import {
  freezeWrites,
  unfreezeWrites,
  pendingChanges,
  removeCapture,
  replayChanges,
  startCapture,
  stopCaptureKeepFrozen,
  withPrimaryKeys,
  type KeyedTable,
} from './change-capture';
import { moveMetrics } from './moves.metrics';
import { kickDrain, queueMove, ACTIVE_MOVE_STATES, moveJobId, type MoveRow, type MoveState } from './moves.service';

/**
 * The move job: a store's managed database copied to another tenant server while the store keeps serving,
 * then the store switched to the copy with its writes held only for the last changes.
 *
 *   1. copying: the target database (named in the row first), at the source's schema version, owned by the
 *      store's role (made on the target server with the store's password); change capture started on the
 *      source; every table copied with COPY from one REPEATABLE READ snapshot straight into the target.
 *   2. catching_up: the changes recorded since the snapshot replayed (rows read again by key) until few are left.
 *   3. switching: every instance holds the store's requests (the migration gate: up to 2 s, then 503
 *      TENANT_MIGRATING); on the source, every table locked EXCLUSIVE — which waits for the writes in flight
 *      and holds new ones — and given a trigger refusing writes (answered 503 TENANT_MIGRATING); the last
 *      changes replayed, the sequences set, the row counts of every table compared; the source's transaction
 *      committed (writes refused from here), then the master switched in one transaction (credentials, server,
 *      database; the move completed; audit); every instance's handle dropped; the requests released.
 *   4. the source closed (ALLOW_CONNECTIONS false, its sessions ended) and kept `STORE_MOVE_KEEP_HOURS`, then
 *      dropped by the maintenance task.
 * Anything failing before the master's commit undoes the source's triggers and drops the target: the store
 * keeps its database as it was. A row found in a state other than queued is an attempt whose worker died:
 * undone the same way and started again (at most MAX_ATTEMPTS in all), or failed.
 */

const MAX_ATTEMPTS = 3;
/** Replayed per round trip: bounded so that a round's rows stay a few MB of JSON. */
const REPLAY_BATCH = 2000;
/** The switch starts once fewer changes than this wait (what the write pause must replay). */
const SWITCH_BELOW = 500;
/** Catch-up rounds before switching anyway (a store written faster than it is copied never drops below). */
const MAX_CATCH_UP_ROUNDS = 50;
/** Creating the capture triggers waits this long for a table's writers in flight, then tries again. */
const CAPTURE_LOCK_MS = 1000;
/** The switch waits this long for the writes in flight (the tenant statement timeout bounds them). */
const FREEZE_LOCK_MS = 3000;
const SWITCH_ATTEMPTS = 3;

const select = <R extends object>(ctx: AppContext, sql: string, bind: unknown[], t?: Transaction) =>
  ctx.master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT, transaction: t });

const run = (ctx: AppContext, sql: string, bind: unknown[], t?: Transaction) =>
  ctx.master.sequelize.query(sql, { bind, transaction: t });

const databaseUrl = (server: TenantServer, database: string) => {
  const u = new URL(server.adminUrl);
  u.pathname = `/${database}`;
  return u.toString();
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const setState = (ctx: AppContext, moveId: string, state: MoveState, extra = '', bind: unknown[] = []) =>
  run(ctx, `UPDATE store_moves SET state = $2, updated_at = now()${extra} WHERE id = $1::uuid`, [
    moveId,
    state,
    ...bind,
  ]);

const perServer = new Map<string, Semaphore>();

/** The queue's processor: at most STORE_MOVES_PER_SERVER moves off one server in this worker process at once. */
export async function processMoveJob(ctx: AppContext, moveId: string): Promise<Record<string, unknown>> {
  const [row] = await select<{ source_server: string }>(
    ctx,
    `SELECT source_server FROM store_moves WHERE id = $1::uuid`,
    [moveId],
  );
  if (!row) return { skipped: 'missing' };
  let gate = perServer.get(row.source_server);
  if (!gate) perServer.set(row.source_server, (gate = new Semaphore(ctx.config.moves.perServer, 100_000)));
  return gate.run(() => processMove(ctx, moveId));
}

/** What one attempt knows about the move as it goes. */
interface Work {
  move: MoveRow;
  source: TenantServer;
  target: TenantServer;
  connection: TenantConnection;
  targetDatabase: string;
  /** The schema version copied: the source must still be at it when the store switches. */
  version: number;
  rows: number;
  changes: number;
}

export async function processMove(ctx: AppContext, moveId: string): Promise<Record<string, unknown>> {
  const [move] = await select<MoveRow>(ctx, `SELECT * FROM store_moves WHERE id = $1::uuid`, [moveId]);
  if (!move || move.state === 'completed' || move.state === 'failed') return { skipped: move?.state ?? 'missing' };
  const started = performance.now();
  const interrupted = move.state !== 'queued';
  await run(
    ctx,
    `UPDATE store_moves SET attempts = attempts + 1, started_at = coalesce(started_at, now()), updated_at = now() WHERE id = $1::uuid`,
    [moveId],
  );
  let work: Work | undefined;
  try {
    // An attempt whose worker died: nothing of it is kept (a copy is cheaper to redo than to trust).
    if (interrupted) await undo(ctx, move);
    if (move.attempts + 1 > MAX_ATTEMPTS) throw new Error(`given up after ${MAX_ATTEMPTS} interrupted attempts`);
    work = await prepare(ctx, move);
    const result = await copyAndSwitch(ctx, work);
    moveMetrics(ctx).completed(result.writePauseMs);
    return { ...result, ms: Math.round(performance.now() - started) };
  } catch (err) {
    const message = (err as Error).message;
    logger.warn({ moveId, storeId: move.store_id, err: message }, 'store move failed; the store keeps its database');
    // As the row is now: the target and role this attempt named there (it may have failed making them).
    const [now] = await select<MoveRow>(ctx, `SELECT * FROM store_moves WHERE id = $1::uuid`, [moveId]).catch(() => []);
    await failMove(ctx, now ?? { ...move, target_database: work?.targetDatabase ?? move.target_database }, message);
    throw err;
  } finally {
    if (move.drain_id)
      await kickDrain(ctx, move.drain_id).catch((err: Error) =>
        logger.warn({ drainId: move.drain_id, err: err.message }, 'could not queue the next moves of a drain'),
      );
  }
}

/** The store as the move found it, the target database named (in the row first) and made, owned by its role. */
async function prepare(ctx: AppContext, move: MoveRow): Promise<Work> {
  const [db] = await select<{
    status: string;
    mode: string;
    server: string | null;
    database_name: string | null;
    credentials: string;
    store_status: string;
  }>(
    ctx,
    `SELECT d.status, d.mode, d.server, d.database_name, d.credentials, s.status AS store_status
       FROM store_databases d JOIN stores s ON s.id = d.store_id WHERE d.store_id = $1::uuid`,
    [move.store_id],
  );
  if (!db || db.store_status !== 'active' || db.status !== 'ready' || db.mode !== 'managed')
    throw new Error(`the store is no longer an active store with a managed database (${db?.store_status ?? 'gone'})`);
  if (db.server !== move.source_server || db.database_name !== move.source_database)
    throw new Error('the store changed database since the move was asked for (restored or moved)');
  const source = serverByKey(ctx, move.source_server);
  const target = serverByKey(ctx, move.target_server);
  const connection = ctx.encryptor.decryptJson<TenantConnection>(
    db.credentials,
    secretContext.storeCredentials(move.store_id),
  );
  const targetDatabase = await ctx.adminPools.withAdmin(target.adminUrl, (admin) =>
    freeName(admin, move.source_database),
  );
  await setState(ctx, move.id, 'copying', ', target_database = $3, role = $4, error = NULL', [
    targetDatabase,
    connection.user,
  ]);
  // The store's role on the target server, with the store's password (made, or set again when it is there).
  await ctx.adminPools.withAdmin(target.adminUrl, async (admin) => {
    const found = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [connection.user]);
    await admin.query(loginRoleSql(found.rowCount ? 'ALTER' : 'CREATE', connection.user, connection.password));
  });
  const version = await withClient(databaseUrl(source, move.source_database), tenantSchemaVersion);
  if (version > fleetTargetVersion(ctx.config))
    throw new Error(`the store's schema ${version} is newer than this code's ${fleetTargetVersion(ctx.config)}`);
  await createDatabaseAt(ctx, target, connection, targetDatabase, version);
  return { move, source, target, connection, targetDatabase, version, rows: 0, changes: 0 };
}

/** The store's database name without a restore's or move's suffix, or with a new suffix when taken on the target. */
async function freeName(admin: pg.ClientBase, current: string): Promise<string> {
  const base = current.replace(/_[rm][0-9a-f]{8}$/, '');
  const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [base]);
  return rowCount ? `${base.slice(0, 50)}_m${randomBytes(4).toString('hex')}` : base;
}

async function copyAndSwitch(ctx: AppContext, work: Work) {
  const { move, source, target } = work;
  return withClient(databaseUrl(source, move.source_database), (src) =>
    withClient(databaseUrl(target, work.targetDatabase), async (dst) => {
      // Foreign keys and triggers off on the target: the rows come from a consistent source.
      await dst.query('SET session_replication_role = replica');
      const tables = await withPrimaryKeys(src, await listTenantTables(src));
      await retryOnLockTimeout(() => startCapture(src, tables, CAPTURE_LOCK_MS), 10);
      work.rows = await bulkCopy(src, dst, tables);
      await setState(ctx, move.id, 'catching_up', ', rows_copied = $3', [work.rows]);
      await catchUp(src, dst, tables, work);
      await setState(ctx, move.id, 'switching', ', changes_replayed = $3', [work.changes]);
      let pause = { ms: 0, steps: {} as Record<string, number> };
      for (let attempt = 1; ; attempt++) {
        try {
          pause = await finalSwitch(ctx, src, dst, tables, work);
          break;
        } catch (err) {
          // Writes in flight outlasted the lock's wait (or the lock gave way in a deadlock): the store went on as
          // before; catch up and try again.
          if (!lockGaveWay(err) || attempt >= SWITCH_ATTEMPTS) throw err;
          await catchUp(src, dst, tables, work);
        }
      }
      await run(ctx, `UPDATE store_moves SET write_pause_ms = $2, updated_at = now() WHERE id = $1::uuid`, [
        move.id,
        pause.ms,
      ]);
      await closeSource(ctx, work, src, tables);
      return {
        storeId: move.store_id,
        from: move.source_server,
        to: move.target_server,
        database: work.targetDatabase,
        rows: work.rows,
        changes: work.changes,
        writePauseMs: pause.ms,
        pauseSteps: pause.steps,
      };
    }),
  );
}

/** Our lock waited too long, or was the one given up in a deadlock (ours detects first: see freezeWrites). */
const lockGaveWay = (err: unknown) =>
  pgCode(err) === PgCode.LOCK_NOT_AVAILABLE || pgCode(err) === PgCode.DEADLOCK_DETECTED;

async function retryOnLockTimeout<T>(fn: () => Promise<T>, attempts: number): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (!lockGaveWay(err) || i >= attempts) throw err;
      await sleep(100 * i);
    }
  }
}

/**
 * Every table from one snapshot of the source straight into the target (COPY text out, COPY in), in one
 * target transaction; indexes no constraint needs are built once after the copy. Answers the rows copied.
 */
async function bulkCopy(src: pg.ClientBase, dst: pg.ClientBase, tables: KeyedTable[]): Promise<number> {
  return inSnapshot(src, async () => {
    await dst.query('BEGIN');
    try {
      const names = tables.map((t) => `public.${ident(t.name)}`);
      if (names.length) await dst.query(`TRUNCATE ${names.join(', ')}`);
      const { rows: indexes } = await dst.query<{ name: string; def: string }>(
        `SELECT i.relname AS name, pg_get_indexdef(i.oid) AS def
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
          WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)`,
      );
      for (const { name } of indexes) await dst.query(`DROP INDEX public.${ident(name)}`);
      let rows = 0;
      for (const table of tables) {
        const sink = copyIn(dst, table);
        await pipeline(copyOut(src, table), sink);
        rows += (sink as unknown as { rowCount: number }).rowCount;
      }
      for (const { def } of indexes) await dst.query(def);
      await dst.query('COMMIT');
      return rows;
    } catch (err) {
      await dst.query('ROLLBACK').catch(() => {});
      throw err;
    }
  });
}

/** Replay the recorded changes until fewer than SWITCH_BELOW wait (or the rounds run out). */
async function catchUp(src: pg.ClientBase, dst: pg.ClientBase, tables: KeyedTable[], work: Work): Promise<void> {
  for (let round = 0; round < MAX_CATCH_UP_ROUNDS; round++) {
    if ((await pendingChanges(src)) < SWITCH_BELOW) return;
    let n: number;
    do {
      n = await replayChanges(src, dst, tables, REPLAY_BATCH);
      work.changes += n;
    } while (n === REPLAY_BATCH);
  }
}

/**
 * The write pause (see the module's comment, step 3). Returns its length in ms, from holding the store's
 * requests to releasing them, and the steps it took. Throws (having undone the freeze) when the master could not be switched.
 */
async function finalSwitch(
  ctx: AppContext,
  src: pg.ClientBase,
  dst: pg.ClientBase,
  tables: KeyedTable[],
  work: Work,
): Promise<{ ms: number; steps: Record<string, number> }> {
  const storeId = work.move.store_id;
  const held = performance.now();
  // Where the pause goes (ms per step), in the job's result.
  const steps: Record<string, number> = {};
  let since = held;
  const step = (name: string) => {
    steps[name] = Math.round(performance.now() - since);
    since = performance.now();
  };
  await ctx.bus.publish({ type: 'tenant.migrating', storeId });
  step('hold');
  let switched = false;
  try {
    await src.query('BEGIN');
    try {
      await freezeWrites(src, tables, FREEZE_LOCK_MS);
      step('lock');
      // A fleet migration run may have migrated the source meanwhile: the copy's schema would be behind.
      const version = await tenantSchemaVersion(src);
      if (version !== work.version)
        throw new Error(`the store's schema went from ${work.version} to ${version} during the move`);
      for (let n = REPLAY_BATCH; n === REPLAY_BATCH;) {
        n = await replayChanges(src, dst, tables, REPLAY_BATCH, true);
        work.changes += n;
      }
      for (const s of await listTenantSequences(src))
        await dst.query(`SELECT setval($1::regclass, $2::bigint, $3)`, [
          `public.${ident(s.name)}`,
          s.lastValue,
          s.isCalled,
        ]);
      step('replay');
      await compareCounts(src, dst, tables);
      step('verify');
      await src.query('COMMIT');
    } catch (err) {
      await src.query('ROLLBACK').catch(() => {});
      throw err;
    }
    // From here the source refuses writes; the master decides where the store lives.
    try {
      await switchPlacement(ctx, work, held);
      switched = true;
      step('switch');
    } catch (err) {
      // A commit whose answer was lost may have gone through: then the store is on the target, and its old
      // database must stay frozen.
      if (await isOnTarget(ctx, { ...work.move, target_database: work.targetDatabase }).catch(() => true)) {
        switched = true;
        logger.warn({ storeId, err: (err as Error).message }, 'a store move switched although its commit failed');
        return { ms: Math.round(performance.now() - held), steps };
      }
      await unfreezeWrites(src, tables).catch((e: Error) =>
        logger.error({ storeId, err: e.message }, 'could not open the writes of a store whose move failed'),
      );
      throw err;
    }
  } finally {
    // Never thrown from here: once switched, nothing may undo it. A lost message is covered: the migration mark
    // expires, and a stale handle's writes are refused by the source (then its sessions are ended).
    await (switched ? ctx.tenants.invalidate(storeId) : Promise.resolve())
      .then(() => ctx.bus.publish({ type: 'tenant.migrated', storeId }))
      .catch((err: Error) => logger.warn({ storeId, err: err.message }, 'could not announce the end of a store move'));
  }
  step('release');
  return { ms: Math.round(performance.now() - held), steps };
}

async function isOnTarget(
  ctx: AppContext,
  move: Pick<MoveRow, 'store_id' | 'target_server' | 'target_database'>,
): Promise<boolean> {
  const [db] = await select<{ server: string; database_name: string }>(
    ctx,
    `SELECT server, database_name FROM store_databases WHERE store_id = $1::uuid`,
    [move.store_id],
  );
  return db?.server === move.target_server && db.database_name === move.target_database;
}

/** Every table holds as many rows on the target as on the (frozen) source. */
async function compareCounts(src: pg.ClientBase, dst: pg.ClientBase, tables: KeyedTable[]): Promise<void> {
  const sql = `SELECT ${tables.map((t, i) => `(SELECT count(*) FROM public.${ident(t.name)})::bigint AS c${i}`).join(', ')}`;
  const [a, b] = await Promise.all([src.query<Record<string, string>>(sql), dst.query<Record<string, string>>(sql)]);
  const differ = tables.filter((_, i) => a.rows[0][`c${i}`] !== b.rows[0][`c${i}`]);
  if (differ.length)
    throw new Error(
      `row counts differ after the copy: ${differ.map((t) => `${t.name} ${a.rows[0][`c${tables.indexOf(t)}`]} vs ${b.rows[0][`c${tables.indexOf(t)}`]}`).join(', ')}`,
    );
}

/**
 * The master's switch, in one transaction under the store's row lock: the credentials (the store's current
 * ones — a password rotated meanwhile is set on the target role first), server and database point at the
 * target; a rotation still pending is dropped (it was staged for the old server); the move completed with its
 * source's drop date and the write pause so far; audited. Ledger, hostnames and members are not touched.
 */
async function switchPlacement(ctx: AppContext, work: Work, held: number): Promise<void> {
  const { move, target, targetDatabase } = work;
  const storeId = move.store_id;
  await ctx.master.sequelize.transaction(async (t) => {
    const [store] = await select<{ status: string }>(
      ctx,
      `SELECT status FROM stores WHERE id = $1::uuid FOR UPDATE`,
      [storeId],
      t,
    );
    const [db] = await select<{ server: string; database_name: string; credentials: string }>(
      ctx,
      `SELECT server, database_name, credentials FROM store_databases WHERE store_id = $1::uuid FOR UPDATE`,
      [storeId],
      t,
    );
    if (store?.status !== 'active' || db?.server !== move.source_server || db.database_name !== move.source_database)
      throw new Error('the store changed while it was being moved (suspended, deleted, restored or moved)');
    const context = secretContext.storeCredentials(storeId);
    const current = ctx.encryptor.decryptJson<TenantConnection>(db.credentials, context);
    if (current.password !== work.connection.password)
      await ctx.adminPools.withAdmin(target.adminUrl, (admin) =>
        admin.query(loginRoleSql('ALTER', current.user, current.password)),
      );
    const moved: TenantConnection = { ...current, host: target.host, port: target.port, database: targetDatabase };
    await run(
      ctx,
      `UPDATE store_databases SET credentials = $2, server = $3, database_name = $4, pending_credentials = NULL,
              updated_at = now()
        WHERE store_id = $1::uuid`,
      [storeId, ctx.encryptor.encryptJson(moved, context), target.key, targetDatabase],
      t,
    );
    await run(
      ctx,
      `UPDATE store_moves SET state = 'completed', rows_copied = $2, changes_replayed = $3, finished_at = now(),
              drop_after = now() + make_interval(hours => $4::int), write_pause_ms = $5, error = NULL, updated_at = now()
        WHERE id = $1::uuid`,
      // The pause so far (the release, a few ms more, is added once it is done).
      [move.id, work.rows, work.changes, ctx.config.moves.keepHours, Math.round(performance.now() - held)],
      t,
    );
    await audit(ctx.master, t, {
      actorUserId: move.requested_by_user,
      storeId,
      action: 'store.move.completed',
      targetType: 'store',
      targetId: storeId,
      data: { moveId: move.id, from: move.source_server, to: move.target_server, by: move.requested_by },
    });
  });
}

/**
 * The database left behind: its change log and row triggers dropped (the refusal stays), closed to
 * connections, its sessions ended. A failure here is logged only: the store has moved.
 */
async function closeSource(ctx: AppContext, work: Work, src: pg.ClientBase, tables: KeyedTable[]): Promise<void> {
  const database = work.move.source_database;
  try {
    await stopCaptureKeepFrozen(src, tables);
    await ctx.adminPools.withAdmin(work.source.adminUrl, async (admin) => {
      await admin.query(`ALTER DATABASE ${ident(database)} WITH ALLOW_CONNECTIONS false`);
      await admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
        [database],
      );
    });
  } catch (err) {
    logger.warn({ storeId: work.move.store_id, err: (err as Error).message }, 'could not close a moved store source');
  }
}

/**
 * Undo what an attempt made, leaving the store as it was: the capture schema (triggers, log, any refusal) off
 * the source, the target database dropped. Never while the master points at the target (then it is the store's).
 */
async function undo(ctx: AppContext, move: MoveRow): Promise<void> {
  if (await isOnTarget(ctx, move)) throw new Error('the store is already on the target: nothing to undo');
  // The target first: a source that cannot be reached (a restore replaced and closed it, say) leaves no copy.
  if (move.target_database)
    await ctx.adminPools.withAdmin(serverByKey(ctx, move.target_server).adminUrl, async (admin) => {
      await admin.query(`DROP DATABASE IF EXISTS ${ident(move.target_database!)} WITH (FORCE)`);
      // The role made for it too, unless it still owns something there (an older move's kept database).
      if (move.role) await admin.query(`DROP ROLE IF EXISTS ${ident(move.role)}`).catch(() => {});
    });
  await withClient(databaseUrl(serverByKey(ctx, move.source_server), move.source_database), removeCapture);
}

/** The move failed: undone (best effort: what cannot be is left to reconcile), the row failed and audited. */
async function failMove(ctx: AppContext, move: MoveRow, message: string): Promise<void> {
  await undo(ctx, move).catch((err: Error) =>
    logger.warn({ moveId: move.id, err: err.message }, 'could not undo a failed store move'),
  );
  await ctx.master.sequelize.transaction(async (t) => {
    const [row] = await select<{ state: string }>(
      ctx,
      `UPDATE store_moves SET state = 'failed', error = $2, finished_at = now(), updated_at = now()
        WHERE id = $1::uuid AND state <> 'completed' RETURNING state`,
      [move.id, message.slice(0, 500)],
      t,
    );
    if (!row) return;
    await audit(ctx.master, t, {
      actorUserId: move.requested_by_user,
      storeId: move.store_id,
      action: 'store.move.failed',
      targetType: 'store',
      targetId: move.store_id,
      data: { moveId: move.id, from: move.source_server, to: move.target_server, error: message.slice(0, 200) },
    });
  });
  moveMetrics(ctx).failed();
}

/**
 * The maintenance task: sources kept past their date dropped (and the store's role on that server, when the
 * store no longer lives there); moves queued to run whose job is gone queued again; drains kept going.
 */
export async function tendMoves(ctx: AppContext): Promise<{ dropped: number; requeued: number }> {
  const due = await select<MoveRow & { current_server: string | null; current_database: string | null }>(
    ctx,
    `SELECT m.*, d.server AS current_server, d.database_name AS current_database FROM store_moves m LEFT JOIN store_databases d ON d.store_id = m.store_id
      WHERE m.state = 'completed' AND m.drop_after <= now() AND m.dropped_at IS NULL LIMIT 100`,
    [],
  );
  let dropped = 0;
  for (const m of due) {
    try {
      // Never the store's own: a store moved back keeps another name while its old database is kept.
      if (m.current_server === m.source_server && m.current_database === m.source_database)
        throw new Error('the store lives in that database again');
      await ctx.adminPools.withAdmin(serverByKey(ctx, m.source_server).adminUrl, async (admin) => {
        await admin.query(`DROP DATABASE IF EXISTS ${ident(m.source_database)} WITH (FORCE)`);
        if (m.role && m.current_server !== m.source_server)
          // Refused while the role still owns something there: then it stays.
          await admin.query(`DROP ROLE IF EXISTS ${ident(m.role)}`).catch(() => {});
      });
      await run(ctx, `UPDATE store_moves SET dropped_at = now(), updated_at = now() WHERE id = $1::uuid`, [m.id]);
      dropped++;
    } catch (err) {
      logger.warn({ moveId: m.id, err: (err as Error).message }, "could not drop a moved store's old database");
    }
  }
  const queue = ctx.queues.get(QueueName.storeMoves);
  const stale = await select<{ id: string }>(
    ctx,
    `SELECT id FROM store_moves WHERE state = ANY($1::text[]) AND dispatched_at IS NOT NULL
        AND updated_at < now() - interval '2 minutes' LIMIT 100`,
    [ACTIVE_MOVE_STATES],
  );
  let requeued = 0;
  for (const { id } of stale) {
    const job = await queue.getJob(moveJobId(id));
    const state = job ? await job.getState() : 'unknown';
    if (['active', 'waiting', 'delayed', 'prioritized'].includes(state)) continue;
    await job?.remove();
    await queueMove(ctx, id);
    requeued++;
  }
  const drains = await select<{ id: string }>(ctx, `SELECT id FROM store_drains WHERE state = 'running'`, []);
  for (const { id } of drains) await kickDrain(ctx, id);
  return { dropped, requeued };
}
