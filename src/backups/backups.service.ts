import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import type pg from 'pg';
import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { migrateWith, migrationFiles } from '../db/migrate';
import { withClient } from '../db/pg-client';
import type { TenantConnection } from '../db/tenant-handle';
import { databaseOfRoleSql, handOverSql, ident } from '../db/tenant-server-admin';
import { serverByKey, type TenantServer } from '../db/tenant-servers';
import { secretContext } from '../lib/crypto';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { Semaphore } from '../lib/semaphore';
import { decryptStream, encryptStream } from '../lib/stream-cipher';
import { fleetTargetVersion, tenantMigrationsDir } from '../migrations/migration-runs.service';
import { ensureTemplate } from '../provisioning/templates';
import { externalAccess, tenantPgConfig } from '../provisioning/tenant-db';
import { requestCreditSync } from '../queue/credit-sync-request';
import { QueueName, type JobPayloads } from '../queue/queues';
import { requireStoreAccess } from '../stores/membership';
import { ACTIVE_MOVE_STATES } from '../moves/moves.service';
import { archiveFrames, ARCHIVE_FORMAT, countLines, readFrames, type BackupManifest } from './archive';
import { LocalDirectoryStorage, type BackupStorage } from './storage';
import { copyIn, inSnapshot, tenantSchemaVersion, type TenantTable } from './tenant-tables';

// Per-store logical backups and restores. A backup reads every table of the store's database in one
// snapshot (COPY text), gzips and encrypts the stream (stream-cipher.ts) into the backup storage; a restore
// fills a new database on the same server from it, checks every table against the manifest, migrates it to
// the current schema, then switches the store to it in one master transaction.

export type BackupState = 'queued' | 'running' | 'completed' | 'failed';

interface BackupRow {
  id: string;
  store_id: string;
  state: BackupState;
  trigger: 'manual' | 'schedule';
  schema_version: number | null;
  bytes: string | null;
  storage_key: string | null;
  manifest: BackupManifest | null;
  created_at: Date;
  expires_at: Date;
}

interface RestoreRow {
  id: string;
  store_id: string;
  backup_id: string;
  state: BackupState;
  requested_by: string | null;
  server: string | null;
  new_database: string | null;
  replaced_database: string | null;
  dropped_at: Date | null;
}

const storages = new Map<string, BackupStorage>();

/** The archives' store (BACKUP_DIR). Another implementation (S3-compatible) would be chosen here. */
export function backupStorage(ctx: Pick<AppContext, 'config'>): BackupStorage {
  const dir = ctx.config.backups.dir;
  let s = storages.get(dir);
  if (!s) storages.set(dir, (s = new LocalDirectoryStorage(dir)));
  return s;
}

/** What binds an archive to its store and backup: another store's archive does not decrypt as this one. */
const archiveContext = (storeId: string, backupId: string) => `store-backup:${storeId}:${backupId}`;
/** Where a backup's archive is kept: known before it is written, so an unfinished one can be found and removed. */
const archiveKey = (storeId: string, backupId: string) => `${storeId}/${backupId}.tbk`;
export const backupJobId = (backupId: string) => `backup-${backupId}`;
export const restoreJobId = (restoreId: string) => `restore-${restoreId}`;

const select = <R extends object>(ctx: AppContext, sql: string, bind: unknown[], t?: Transaction) =>
  ctx.master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT, transaction: t });

const run = (ctx: AppContext, sql: string, bind: unknown[], t?: Transaction) =>
  ctx.master.sequelize.query(sql, { bind, transaction: t });

/** Record a backup (queued, expiring after the store's plan's retention) and queue its job. */
export async function queueBackup(
  ctx: AppContext,
  storeId: string,
  trigger: 'manual' | 'schedule',
  userId: string | null,
): Promise<string> {
  const [row] = await select<{ id: string }>(
    ctx,
    `INSERT INTO store_backups (store_id, trigger, requested_by, expires_at)
     SELECT s.id, $2, $3::uuid, now() + make_interval(days => coalesce(p.backup_retention_days, $4::int))
       FROM stores s
       LEFT JOIN subscriptions sub ON sub.user_id = s.owner_id AND sub.status = 'active'
       JOIN plans p ON p.id = coalesce(sub.plan_id, 'free')
      WHERE s.id = $1::uuid
      LIMIT 1
     RETURNING id`,
    [storeId, trigger, userId, ctx.config.backups.retentionDays],
  );
  await ctx.queues
    .get(QueueName.backups)
    .add('backup', { kind: 'backup', id: row.id }, { jobId: backupJobId(row.id), attempts: 1 });
  return row.id;
}

/** The store's database row, refusing a store without a ready database (409 STORE_NOT_READY). */
async function readyDatabase(ctx: AppContext, storeId: string) {
  const db = await ctx.master.models.StoreDatabase.findByPk(storeId);
  if (!db || db.status !== 'ready') throw fail(ErrorCode.STORE_NOT_READY, 'This store has no database ready yet');
  return db;
}

/** POST /api/stores/:id/backups: an on-demand backup (owner/admin). */
export async function requestBackup(ctx: AppContext, userId: string, storeId: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  await readyDatabase(ctx, storeId);
  return { backupId: await queueBackup(ctx, storeId, 'manual', userId) };
}

/** GET /api/stores/:id/backups: newest first, expired ones gone. */
export async function listBackups(ctx: AppContext, userId: string, storeId: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin']);
  const rows = await select<BackupRow>(
    ctx,
    `SELECT * FROM store_backups WHERE store_id = $1::uuid ORDER BY created_at DESC, id LIMIT 500`,
    [storeId],
  );
  return {
    items: rows.map((r) => ({
      id: r.id,
      state: r.state,
      schemaVersion: r.schema_version,
      bytes: r.bytes === null ? null : Number(r.bytes),
      createdAt: new Date(r.created_at).toISOString(),
      expiresAt: new Date(r.expires_at).toISOString(),
    })),
  };
}

/** How a worker reaches a store's database: managed ones as the server's admin, external ones with their credentials. */
function storeDatabaseConfig(
  ctx: AppContext,
  db: { storeId: string; mode: 'managed' | 'external'; server: string | null; credentials: string },
): pg.ClientConfig {
  const connection = ctx.encryptor.decryptJson<TenantConnection>(
    db.credentials,
    secretContext.storeCredentials(db.storeId),
  );
  if (db.mode === 'managed')
    return { connectionString: databaseUrl(serverByKey(ctx, db.server!), connection.database) };
  return tenantPgConfig(connection, externalAccess(ctx, db.mode));
}

const databaseUrl = (server: TenantServer, database: string) => {
  const u = new URL(server.adminUrl);
  u.pathname = `/${database}`;
  return u.toString();
};

/**
 * The backup job: snapshot, COPY, gzip, encrypt, store; the row completed with its size and manifest. A row
 * found `running` is a backup whose worker died (its job handed over as stalled): it is made again from the
 * start, over whatever the first attempt had written (the storage publishes an archive only once whole).
 */
export async function processBackup(ctx: AppContext, backupId: string) {
  const [row] = await select<BackupRow>(ctx, `SELECT * FROM store_backups WHERE id = $1::uuid`, [backupId]);
  if (!row || row.state === 'completed' || row.state === 'failed') return { skipped: row?.state ?? 'missing' };
  await run(ctx, `UPDATE store_backups SET state = 'running' WHERE id = $1::uuid`, [backupId]);
  const storeId = row.store_id;
  const key = archiveKey(storeId, backupId);
  const started = performance.now();
  try {
    const db = await readyDatabase(ctx, storeId);
    const { manifest, bytes } = await withClient(storeDatabaseConfig(ctx, db), (client) =>
      inSnapshot(client, async () => {
        const schemaVersion = await tenantSchemaVersion(client);
        const header = { format: ARCHIVE_FORMAT, storeId, backupId, schemaVersion };
        const manifest: BackupManifest = {
          ...header,
          createdAt: new Date().toISOString(),
          tables: [],
          sequences: [],
        };
        const body = Readable.from(archiveFrames(client, header, manifest))
          .pipe(createGzip({ level: 6 }))
          .pipe(encryptStream(ctx.encryptor, archiveContext(storeId, backupId)));
        const { bytes } = await backupStorage(ctx).put(key, body);
        return { manifest, bytes };
      }),
    );
    await run(
      ctx,
      `UPDATE store_backups SET state = 'completed', schema_version = $2, bytes = $3, storage_key = $4, key_id = $5,
              manifest = $6::jsonb, completed_at = now(), error = NULL
        WHERE id = $1::uuid`,
      [backupId, manifest.schemaVersion, bytes, key, ctx.encryptor.currentKey().id, JSON.stringify(manifest)],
    );
    const rows = manifest.tables.reduce((n, t) => n + t.rows, 0);
    return { bytes, rows, ms: Math.round(performance.now() - started) };
  } catch (err) {
    await backupStorage(ctx)
      .delete(key)
      .catch(() => {});
    await run(ctx, `UPDATE store_backups SET state = 'failed', error = $2 WHERE id = $1::uuid`, [
      backupId,
      (err as Error).message.slice(0, 500),
    ]);
    throw err;
  }
}

/** POST /api/stores/:id/backups/:backupId/restore (owner/admin): queue the restore. */
export async function requestRestore(ctx: AppContext, userId: string, storeId: string, backupId: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const db = await readyDatabase(ctx, storeId);
  const [backup] = await select<BackupRow>(
    ctx,
    `SELECT * FROM store_backups WHERE id = $1::uuid AND store_id = $2::uuid AND expires_at > now()`,
    [backupId, storeId],
  );
  if (!backup) throw fail(ErrorCode.NOT_FOUND, 'This store has no such backup');
  if (backup.state !== 'completed') throw fail(ErrorCode.CONFLICT, 'Only a completed backup can be restored');
  if (db.mode !== 'managed')
    throw fail(ErrorCode.CONFLICT, "A store on its own database is restored by its owner's tools, not here");
  const restoreId = await ctx.master.sequelize.transaction(async (t) => {
    // One restore per store at a time (the store row's lock orders two requests).
    await select(ctx, `SELECT id FROM stores WHERE id = $1::uuid FOR UPDATE`, [storeId], t);
    // One restore or move per store at a time (a move's switch would otherwise fail on the restored database).
    const [busy] = await select<{ kind: string }>(
      ctx,
      `SELECT 'restore' AS kind FROM store_restores WHERE store_id = $1::uuid AND state IN ('queued', 'running')
       UNION ALL
       SELECT 'move' FROM store_moves WHERE store_id = $1::uuid AND state = ANY($2::text[])
       LIMIT 1`,
      [storeId, ACTIVE_MOVE_STATES],
      t,
    );
    if (busy)
      throw fail(
        ErrorCode.CONFLICT,
        busy.kind === 'restore'
          ? 'A restore of this store is already in progress'
          : 'A move of this store is in progress',
      );
    const [row] = await select<{ id: string }>(
      ctx,
      `INSERT INTO store_restores (store_id, backup_id, requested_by, server) VALUES ($1::uuid, $2::uuid, $3::uuid, $4)
       RETURNING id`,
      [storeId, backupId, userId, db.server],
      t,
    );
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.restore.requested',
      targetType: 'store',
      targetId: storeId,
      data: { backupId, restoreId: row.id },
    });
    return row.id;
  });
  const jobId = restoreJobId(restoreId);
  await ctx.queues.get(QueueName.backups).add('restore', { kind: 'restore', id: restoreId }, { jobId, attempts: 1 });
  return { jobId };
}

/** A restored database's name: the store's database name with a random suffix (one suffix, however many restores). */
const restoredName = (current: string) =>
  `${current.replace(/_r[0-9a-f]{8}$/, '').slice(0, 50)}_r${randomBytes(4).toString('hex')}`;

/** A backup or restore refused because what it read is not what was written. */
export class ArchiveIntegrityError extends Error {
  override readonly name = 'ArchiveIntegrityError';
}

/**
 * The restore job: a new database (template of the backup's schema, else created and migrated to it), the
 * archive copied in and checked table by table, migrated to the current schema, then the store switched to
 * it. Anything failing before the switch drops the new database and leaves the store as it was.
 */
export async function processRestore(ctx: AppContext, restoreId: string) {
  const [restore] = await select<RestoreRow>(ctx, `SELECT * FROM store_restores WHERE id = $1::uuid`, [restoreId]);
  if (restore?.state === 'completed' && restore.replaced_database && restore.server && !restore.dropped_at) {
    // Switched, but the job came back (its worker died right after the switch): what follows it is done again.
    await afterSwitch(ctx, restore.store_id, serverByKey(ctx, restore.server), restore.replaced_database);
    return { skipped: restore.state };
  }
  if (!restore || restore.state === 'completed' || restore.state === 'failed')
    return { skipped: restore?.state ?? 'missing' };
  if (restore.state === 'running') {
    // An earlier attempt's worker died (the job came back as stalled). Not resumed: a restore throws away what
    // the store wrote since its backup, so it must not happen later than its owner saw it running. The store
    // kept its database; the half-built one goes, and the owner can ask again.
    const reason = `${INTERRUPTED_RESTORE} (its job was handed to another worker)`;
    await endRestore(ctx, restore, reason);
    throw new Error(reason);
  }
  const { store_id: storeId } = restore;
  const [backup] = await select<BackupRow>(ctx, `SELECT * FROM store_backups WHERE id = $1::uuid`, [restore.backup_id]);
  const db = await readyDatabase(ctx, storeId);
  const server = serverByKey(ctx, db.server!);
  const connection = ctx.encryptor.decryptJson<TenantConnection>(
    db.credentials,
    secretContext.storeCredentials(storeId),
  );
  const newDatabase = restoredName(connection.database);
  await run(
    ctx,
    `UPDATE store_restores SET state = 'running', new_database = $2, new_role = $3, updated_at = now() WHERE id = $1::uuid`,
    [restoreId, newDatabase, connection.user],
  );
  const started = performance.now();
  try {
    if (!backup?.manifest || !backup.storage_key) throw new Error('the backup is gone or was never completed');
    const version = backup.schema_version ?? 0;
    // How long each step took (ms), in the job's result: where a restore's time goes.
    const steps: Record<string, number> = {};
    let since = performance.now();
    const step = (name: string) => {
      steps[name] = Math.round(performance.now() - since);
      since = performance.now();
    };
    await createDatabaseAt(ctx, server, connection, newDatabase, version);
    step('create');
    const url = databaseUrl(server, newDatabase);
    const rows = await fillFromArchive(ctx, url, backup, step);
    step('indexes');
    const schemaVersion = await withClient(url, async (client) => {
      await client.query(`SET ROLE ${ident(connection.user)}`);
      return (await migrateWith('tenant', client, tenantMigrationsDir(ctx.config))).schemaVersion;
    });
    step('migrate');
    await switchStore(ctx, restore, newDatabase, connection.database, schemaVersion);
    step('switch');
    await afterSwitch(ctx, storeId, server, connection.database);
    return { rows, schemaVersion, database: newDatabase, ms: Math.round(performance.now() - started), steps };
  } catch (err) {
    logger.warn({ storeId, restoreId, err: (err as Error).message }, 'restore failed; the store keeps its database');
    await endRestore(ctx, { ...restore, new_database: newDatabase, server: server.key }, (err as Error).message);
    throw err;
  }
}

/**
 * After a restore's switch (again, should its job come back): the replaced database is kept (for the retention
 * period) but no longer reachable, so an instance that missed the switch cannot write into it; the store's
 * credit cache is synced again.
 */
async function afterSwitch(ctx: AppContext, storeId: string, server: TenantServer, replaced: string): Promise<void> {
  await withClient(server.adminUrl, async (client) => {
    await client.query(`ALTER DATABASE ${ident(replaced)} WITH ALLOW_CONNECTIONS false`);
    await client.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
      [replaced],
    );
  }).catch((err: Error) => logger.warn({ storeId, err: err.message }, 'could not close the replaced database'));
  await requestCreditSync(ctx, storeId);
}

const INTERRUPTED_RESTORE =
  'interrupted: the worker running this restore stopped before the switch; the store kept its database';
const INTERRUPTED_BACKUP =
  'interrupted: the worker running this backup stopped before it finished; no archive was kept';

/**
 * A restore that will not finish: the database it was filling dropped, the row failed with `reason`. Never
 * the store's own database: when the switch's commit went through after all (its answer lost), the store is on
 * it, and the row says completed, which this leaves as it is.
 */
async function endRestore(
  ctx: AppContext,
  restore: Pick<RestoreRow, 'id' | 'store_id' | 'server' | 'new_database'>,
  reason: string,
): Promise<void> {
  const [db] = await select<{ database_name: string | null }>(
    ctx,
    `SELECT database_name FROM store_databases WHERE store_id = $1::uuid`,
    [restore.store_id],
  );
  const database = restore.new_database;
  if (database && restore.server && db?.database_name !== database)
    await withClient(serverByKey(ctx, restore.server).adminUrl, (client) =>
      client.query(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`),
    ).catch((err: Error) =>
      // Left to reconcile, which reports it as an orphan once the row is no longer running.
      logger.warn({ restoreId: restore.id, database, err: err.message }, "could not drop a restore's database"),
    );
  await run(
    ctx,
    `UPDATE store_restores SET state = 'failed', error = $2, updated_at = now()
      WHERE id = $1::uuid AND state IN ('queued', 'running')`,
    [restore.id, reason.slice(0, 500)],
  );
}

/**
 * Backups and restores whose job will never run them to the end: the job gone from the queue, or failed
 * without its processor recording it (a worker killed once more than the queue hands a stalled job over). Each
 * is failed with a reason, its unfinished archive or half-built database removed, so the store's next backup or
 * restore can be asked for. Rows younger than `graceSeconds` are left alone (their job may be about to be
 * queued). Part of the schedule-backups task.
 */
export async function endAbandoned(ctx: AppContext, graceSeconds = 60): Promise<{ abandoned: number }> {
  const queue = ctx.queues.get(QueueName.backups);
  /** Why the job will not finish the row, or null while it may still (waiting, delayed, active). */
  const ended = async (jobId: string): Promise<string | null> => {
    const job = await queue.getJob(jobId);
    if (!job) return 'its job is gone from the queue';
    const state = await job.getState();
    if (state !== 'failed' && state !== 'completed' && state !== 'unknown') return null;
    return `its job ${state}${job.failedReason ? `: ${job.failedReason}` : ''}`;
  };
  let abandoned = 0;
  const backups = await select<{ id: string; store_id: string }>(
    ctx,
    `SELECT id, store_id FROM store_backups
      WHERE state IN ('queued', 'running') AND created_at < now() - make_interval(secs => $1) LIMIT 500`,
    [graceSeconds],
  );
  for (const b of backups) {
    const why = await ended(backupJobId(b.id));
    if (!why) continue;
    await backupStorage(ctx).delete(archiveKey(b.store_id, b.id));
    await run(
      ctx,
      `UPDATE store_backups SET state = 'failed', error = $2 WHERE id = $1::uuid AND state IN ('queued', 'running')`,
      [b.id, `${INTERRUPTED_BACKUP} (${why})`.slice(0, 500)],
    );
    abandoned++;
  }
  const restores = await select<RestoreRow>(
    ctx,
    `SELECT * FROM store_restores
      WHERE state IN ('queued', 'running') AND updated_at < now() - make_interval(secs => $1) LIMIT 500`,
    [graceSeconds],
  );
  for (const r of restores) {
    const why = await ended(restoreJobId(r.id));
    if (!why) continue;
    await endRestore(ctx, r, `${INTERRUPTED_RESTORE} (${why})`);
    abandoned++;
  }
  return { abandoned };
}

/** The new database, owned by the store's role with CONNECT for it alone (as provisioning makes one), at `version` (also a move's target). */
export async function createDatabaseAt(
  ctx: AppContext,
  server: TenantServer,
  connection: TenantConnection,
  database: string,
  version: number,
): Promise<void> {
  const dir = tenantMigrationsDir(ctx.config);
  const latest = fleetTargetVersion(ctx.config);
  if (version > latest) throw new Error(`the backup's schema ${version} is newer than this code's ${latest}`);
  const template =
    version === latest && ctx.config.provisioning.templates ? await ensureTemplate(server).catch(() => null) : null;
  // The store's role is left as it is (its password may be in the middle of a rotation): only the database is new.
  await ctx.adminPools.withAdmin(server.adminUrl, async (client) => {
    const from = template ? ` TEMPLATE ${ident(template)}` : '';
    await client.query(`CREATE DATABASE ${ident(database)} OWNER ${ident(connection.user)}${from}`);
    await client.query(databaseOfRoleSql(database, connection.user));
  });
  // Up to the backup's version only: the data is copied in as it was, then migrated with the current code.
  const upTo = version === latest ? dir : await migrationsUpTo(dir, version);
  try {
    await withClient(databaseUrl(server, database), async (client) => {
      await client.query(handOverSql(connection.user));
      await client.query(`SET ROLE ${ident(connection.user)}`);
      await migrateWith('tenant', client, upTo);
    });
  } finally {
    if (upTo !== dir) await rm(upTo, { recursive: true, force: true });
  }
}

async function migrationsUpTo(dir: string, version: number): Promise<string> {
  const out = await mkdtemp(path.join(tmpdir(), 'tenantry-schema-'));
  for (const f of migrationFiles(dir).filter((f) => f.version <= version))
    await copyFile(path.join(dir, f.fileName), path.join(out, f.fileName));
  return out;
}

/** Connections a restore fills its database through: a table's rows are dealt out between them (2 cores do ~1.3× one). */
const RESTORE_LANES = 2;

/**
 * Copy the archive into the new database, triggers and foreign-key checks off (replica mode: the rows are a
 * consistent snapshot already), each table's rows and checksum compared with the manifest recorded at backup
 * time. A chunk that does not authenticate, a checksum or count that differs, a missing table or a missing
 * end: the restore fails, and its database (never seen by the store) is dropped with everything in it — so
 * the copy needs no transaction of its own, and runs on RESTORE_LANES connections at once: each table's rows,
 * cut at line ends, go to whichever connection's turn it is. Indexes and the keys of large tables are set
 * aside (setAside) and built once their table's rows are in: on one more connection while the next tables are
 * copied, then on every connection once the copy is done; the foreign keys resting on those keys last.
 */
async function fillFromArchive(
  ctx: AppContext,
  url: string,
  backup: BackupRow,
  step: (name: string) => void,
): Promise<number> {
  const expected = backup.manifest!;
  const byName = new Map(expected.tables.map((t) => [t.name, t]));
  const source = await backupStorage(ctx).get(backup.storage_key!);
  return withClients(url, RESTORE_LANES + 1, async ([indexer, ...lanes]) => {
    for (const lane of lanes) await lane.query(`SET session_replication_role = replica`);
    const [first] = lanes;
    await emptyTables(
      first,
      expected.tables.map((t) => t.name),
    );
    const aside = await setAside(
      first,
      expected.tables.filter((t) => t.rows >= KEYS_AFTER_ROWS).map((t) => t.name),
    );
    // The statements (index and key builds) of the tables that are in, not yet run; each connection given to
    // `build` takes the next one until none is left.
    const pending: string[] = [];
    const build = async (client: pg.ClientBase) => {
      for (let sql = pending.shift(); sql; sql = pending.shift()) await client.query(sql);
    };
    let indexing = Promise.resolve();
    const seen = new Set<string>();
    let total = 0;
    let ended = false;
    await pipeline(
      source,
      decryptStream(ctx.encryptor, archiveContext(backup.store_id, backup.id)),
      // Larger pieces than zlib's 16 KiB default: inflating 30 MB took 3× as long in 16 KiB pieces.
      createGunzip({ chunkSize: 256 * 1024 }),
      async (plain: AsyncIterable<Buffer>) => {
        let table: TenantTable | null = null;
        let copy: LaneCopy | null = null;
        let hash = createHash('sha256');
        let rows = 0;
        for await (const frame of readFrames(Readable.from(plain))) {
          if (frame.type === 'H') {
            if (frame.header.storeId !== backup.store_id || frame.header.backupId !== backup.id)
              throw new ArchiveIntegrityError('the archive belongs to another backup');
          } else if (frame.type === 'T') {
            const want = byName.get(frame.table.name);
            if (!want || seen.has(want.name)) throw new ArchiveIntegrityError(`unexpected table ${frame.table.name}`);
            table = { name: want.name, columns: want.columns };
            copy = new LaneCopy(lanes, table);
            hash = createHash('sha256');
            rows = 0;
          } else if (frame.type === 'D') {
            if (!copy) throw new ArchiveIntegrityError('rows outside a table');
            hash.update(frame.data);
            rows += countLines(frame.data);
            await copy.write(frame.data);
          } else if (frame.type === 'E') {
            if (!copy || !table) throw new ArchiveIntegrityError('a table end outside a table');
            await copy.end();
            const want = byName.get(table.name)!;
            if (want.rows !== rows || want.sha256 !== hash.digest('hex'))
              throw new ArchiveIntegrityError(`table ${table.name} does not match the manifest`);
            seen.add(table.name);
            total += rows;
            const ready = aside.builds.get(table.name) ?? [];
            aside.builds.delete(table.name);
            if (ready.length) {
              pending.push(...ready);
              indexing = indexing.then(() => build(indexer));
              // Awaited below; a failure is not to be an unhandled rejection meanwhile.
              indexing.catch(() => {});
            }
            copy = null;
            table = null;
          } else if (frame.type === 'M') {
            // Field by field: the recorded copy went through jsonb, which orders keys its own way.
            const fingerprint = (m: BackupManifest) =>
              JSON.stringify(m.tables.map((x) => [x.name, x.columns, x.rows, x.bytes, x.sha256]));
            const same = fingerprint(frame.manifest) === fingerprint(expected) && frame.manifest.backupId === backup.id;
            if (!same) throw new ArchiveIntegrityError("the archive's manifest differs from the recorded one");
            ended = true;
          }
        }
        // A copy still open (the archive cut inside a table) is ended, so its connection can be closed.
        await copy?.end().catch(() => {});
      },
    );
    if (!ended || seen.size !== expected.tables.length)
      throw new ArchiveIntegrityError('the archive ends before all of its tables');
    step('copy');
    // Those of tables no archive holds (the migration runner's own) were dropped too: built again here.
    for (const rest of aside.builds.values()) pending.push(...rest);
    await Promise.all([indexing, ...lanes.map(build)]);
    // Once every key is back (checked as they are added, as pg_restore does; they take the same locks: one by one).
    for (const sql of aside.foreignKeys) await first.query(sql);
    for (const s of expected.sequences)
      await first.query(`SELECT setval($1::regclass, $2::bigint, $3)`, [
        `public.${ident(s.name)}`,
        s.lastValue,
        s.isCalled,
      ]);
    return total;
  });
}

/** A table with this many rows or more gets its primary key and unique constraints after its copy, not during it. */
const KEYS_AFTER_ROWS = 10_000;

/**
 * What is set aside while the rows are copied, as pg_restore does it: a btree filled row by row in the order
 * of the rows (random, for a uuid key) costs about twice a build of it from sorted rows. Dropped here: every
 * index that no constraint needs; the primary key and unique constraints of the `big` tables, with the
 * foreign keys that rest on them. Answered: the statements that put them back — per table, to run once its
 * rows are in (`builds`), and the foreign keys, to run once every key is back. Names and definitions are as
 * the catalog gives them, so the schema ends as it began.
 */
async function setAside(
  client: pg.ClientBase,
  big: string[],
): Promise<{ builds: Map<string, string[]>; foreignKeys: string[] }> {
  const { rows } = await client.query<{ table: string; name: string; def: string; kind: 'i' | 'p' | 'u' | 'f' }>(
    `WITH keys AS (
       SELECT c.oid, c.conindid FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public' AND c.contype IN ('p', 'u') AND t.relname = ANY($1::text[]))
     SELECT t.relname AS table, i.relname AS name, pg_get_indexdef(i.oid) AS def, 'i' AS kind
       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
       JOIN pg_namespace n ON n.oid = i.relnamespace
      WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
     UNION ALL
     SELECT t.relname, c.conname, pg_get_constraintdef(c.oid), c.contype::text
       FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
      WHERE c.oid IN (SELECT oid FROM keys) OR (c.contype = 'f' AND c.conindid IN (SELECT conindid FROM keys))`,
    [big],
  );
  const table = (name: string) => `public.${ident(name)}`;
  const drop = (kinds: string[]) => {
    const byTable = new Map<string, string[]>();
    for (const r of rows.filter((r) => kinds.includes(r.kind)))
      byTable.set(r.table, [...(byTable.get(r.table) ?? []), `DROP CONSTRAINT ${ident(r.name)}`]);
    return [...byTable].map(([t, clauses]) => `ALTER TABLE ${table(t)} ${clauses.join(', ')}`);
  };
  // The foreign keys first: a key they rest on cannot go before them.
  for (const sql of [...drop(['f']), ...drop(['p', 'u'])]) await client.query(sql);
  for (const r of rows.filter((r) => r.kind === 'i')) await client.query(`DROP INDEX public.${ident(r.name)}`);
  const builds = new Map<string, string[]>();
  const add = (r: (typeof rows)[number]) => `ALTER TABLE ${table(r.table)} ADD CONSTRAINT ${ident(r.name)} ${r.def}`;
  // A table's keys before its other indexes (nothing waits on those).
  for (const r of [...rows.filter((r) => r.kind === 'p' || r.kind === 'u'), ...rows.filter((r) => r.kind === 'i')])
    builds.set(r.table, [...(builds.get(r.table) ?? []), r.kind === 'i' ? r.def : add(r)]);
  return { builds, foreignKeys: rows.filter((r) => r.kind === 'f').map(add) };
}

/** `n` clients on `url` for the length of `fn`, all ended afterwards. */
async function withClients<T>(url: string, n: number, fn: (clients: pg.Client[]) => Promise<T>): Promise<T> {
  const clients: pg.Client[] = [];
  const open = (i: number): Promise<T> =>
    withClient(url, (client) => {
      clients.push(client);
      return i + 1 < n ? open(i + 1) : fn(clients);
    });
  return open(0);
}

/**
 * The new database comes from the template or the migrations, with no rows; should a migration ever seed
 * some, the tables that have any are emptied (one look at all of them, not a TRUNCATE of every table).
 */
async function emptyTables(client: pg.ClientBase, names: string[]): Promise<void> {
  if (!names.length) return;
  const { rows } = await client.query<{ name: string }>(
    names
      .map((n) => `SELECT '${n.replace(/'/g, "''")}' AS name WHERE EXISTS (SELECT 1 FROM public.${ident(n)})`)
      .join(' UNION ALL '),
  );
  if (rows.length) await client.query(`TRUNCATE ${rows.map((r) => `public.${ident(r.name)}`).join(', ')}`);
}

/**
 * One table's COPY … FROM STDIN on every lane, opened on a lane when it is first given rows (a small table
 * uses one). Rows are dealt out in whole lines, piece by piece in turn, each lane's own COPY pacing it.
 */
class LaneCopy {
  private readonly sinks: (Writable | null)[];
  private next = 0;
  private carry: Buffer | null = null;
  /** The first error of any lane's COPY. */
  private failed: Error | null = null;

  constructor(
    private readonly lanes: pg.ClientBase[],
    private readonly table: TenantTable,
  ) {
    this.sinks = lanes.map(() => null);
  }

  private sink(lane: number): Writable {
    let sink = this.sinks[lane];
    if (!sink) {
      sink = copyIn(this.lanes[lane], this.table);
      // Heard at all times: a COPY the server refuses (a row the schema forbids) while no one waits on its
      // stream must fail the restore, not the process (an unheard 'error' event) nor leave a wait hanging.
      sink.on('error', (err: Error) => (this.failed ??= err));
      this.sinks[lane] = sink;
    }
    return sink;
  }

  async write(data: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    const piece = this.carry ? Buffer.concat([this.carry, data]) : data;
    // A row never spans two lanes: the piece goes up to its last line end, the rest waits for the next one.
    const cut = piece.lastIndexOf(10) + 1;
    this.carry = cut < piece.length ? piece.subarray(cut) : null;
    if (cut === 0) return;
    const sink = this.sink(this.next);
    this.next = (this.next + 1) % this.lanes.length;
    // once() fails on this stream's error; another lane's is seen at the next write.
    if (!sink.write(cut === piece.length ? piece : piece.subarray(0, cut))) await once(sink, 'drain');
  }

  /** Every lane's COPY ended and acknowledged by the server (a bad row fails here). */
  async end(): Promise<void> {
    // Bytes after the last line end: not a row COPY text can have; the server refuses them as the rest.
    if (this.carry && !this.failed) this.sink(0).write(this.carry);
    this.carry = null;
    const open = this.sinks.filter((s): s is Writable => s !== null);
    this.sinks.fill(null);
    if (this.failed) throw this.failed;
    await Promise.all(
      open.map(async (sink) => {
        sink.end();
        await once(sink, 'finish');
      }),
    );
  }
}

/**
 * The switch, in one master transaction under the store's row lock: the store's credentials and database name
 * point at the restored database, the restore is completed with the replaced database's drop date. Every
 * instance holds the store's requests meanwhile (the migration gate: up to 2 s, then 503 TENANT_MIGRATING
 * with Retry-After) and drops its handle afterwards. Ledger, hostnames and members are not touched.
 */
async function switchStore(
  ctx: AppContext,
  restore: RestoreRow,
  database: string,
  replaced: string,
  schemaVersion: number,
): Promise<void> {
  const storeId = restore.store_id;
  // Every instance holds the store's requests from here until "migrated" (up to 2 s, then 503 TENANT_MIGRATING).
  await ctx.bus.publish({ type: 'tenant.migrating', storeId });
  try {
    await ctx.master.sequelize.transaction(async (t) => {
      const [store] = await select<{ status: string }>(
        ctx,
        `SELECT status FROM stores WHERE id = $1::uuid FOR UPDATE`,
        [storeId],
        t,
      );
      const [db] = await select<{ database_name: string; credentials: string }>(
        ctx,
        `SELECT database_name, credentials FROM store_databases WHERE store_id = $1::uuid FOR UPDATE`,
        [storeId],
        t,
      );
      if (store?.status !== 'active' || db?.database_name !== replaced)
        throw new Error('the store changed while it was being restored (suspended, deleted or moved)');
      // The credentials as they are now (a password rotated meanwhile stays rotated): only the database changes.
      const current = ctx.encryptor.decryptJson<TenantConnection>(
        db.credentials,
        secretContext.storeCredentials(storeId),
      );
      await run(
        ctx,
        `UPDATE store_databases SET credentials = $2, database_name = $3, schema_version = $4, updated_at = now()
          WHERE store_id = $1::uuid`,
        [
          storeId,
          ctx.encryptor.encryptJson({ ...current, database }, secretContext.storeCredentials(storeId)),
          database,
          schemaVersion,
        ],
        t,
      );
      const [backup] = await select<{ days: number }>(
        ctx,
        `SELECT greatest(1, ceil(extract(epoch FROM b.expires_at - b.created_at) / 86400))::int AS days
           FROM store_backups b WHERE b.id = $1::uuid`,
        [restore.backup_id],
        t,
      );
      await run(
        ctx,
        `UPDATE store_restores SET state = 'completed', replaced_database = $2, replaced_role = $3,
                drop_after = now() + make_interval(days => $4::int), updated_at = now()
          WHERE id = $1::uuid`,
        [restore.id, replaced, current.user, backup?.days ?? ctx.config.backups.retentionDays],
        t,
      );
      await audit(ctx.master, t, {
        actorUserId: restore.requested_by,
        storeId,
        action: 'store.restored',
        targetType: 'store',
        targetId: storeId,
        data: { backupId: restore.backup_id, restoreId: restore.id },
      });
    });
  } finally {
    // Never thrown from here: once the switch is committed, nothing may undo the restored database. A lost
    // message is covered: the migration marks expire, and the replaced database refuses connections.
    await ctx.tenants
      .invalidate(storeId)
      .then(() => ctx.bus.publish({ type: 'tenant.migrated', storeId }))
      .catch((err: Error) =>
        logger.warn({ storeId, err: err.message }, 'could not announce the switch of a restored store'),
      );
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A day's worth of seconds: each store has its own time of day for its scheduled backup. */
const DAY_S = 86_400;

/**
 * The schedule's task: a backup for every active store whose time of day (spread over the day by its id)
 * has come since its last scheduled backup, at most `limit` per run (the queue then bounds them per server).
 */
export async function scheduleDueBackups(ctx: AppContext, limit = 200): Promise<{ queued: number }> {
  const due = await select<{ id: string }>(
    ctx,
    `WITH slots AS (
       SELECT s.id,
              date_trunc('day', now()) + make_interval(secs => ((('x' || substr(md5(s.id::text), 1, 8))::bit(32)::bigint) % ${DAY_S})) AS today
         FROM stores s JOIN store_databases d ON d.store_id = s.id
        WHERE s.status = 'active' AND d.status = 'ready'
     )
     SELECT id FROM slots
      WHERE NOT EXISTS (
        SELECT 1 FROM store_backups b
         WHERE b.store_id = slots.id AND b.trigger = 'schedule'
           AND b.created_at >= CASE WHEN slots.today > now() THEN slots.today - interval '1 day' ELSE slots.today END)
      ORDER BY id LIMIT $1`,
    [limit],
  );
  for (const { id } of due) await queueBackup(ctx, id, 'schedule', null);
  return { queued: due.length };
}

/**
 * The retention's task: expired archives and their rows removed, the archives of purged stores too, and
 * replaced databases past their date dropped.
 */
export async function removeExpired(ctx: AppContext): Promise<{ archives: number; databases: number }> {
  const expired = await select<{ id: string; storage_key: string | null }>(
    ctx,
    `SELECT id, storage_key FROM store_backups WHERE expires_at <= now() AND state <> 'running' LIMIT 1000`,
    [],
  );
  for (const b of expired) {
    if (b.storage_key) await backupStorage(ctx).delete(b.storage_key);
    await run(ctx, `DELETE FROM store_backups WHERE id = $1::uuid`, [b.id]);
  }
  // A purged store's rows went with it (ON DELETE CASCADE): its archives are found by their key prefix.
  const storage = backupStorage(ctx);
  const prefixes = (await storage.list('')).filter((p) => UUID.test(p));
  const known = new Set(
    (await select<{ id: string }>(ctx, `SELECT id::text AS id FROM stores WHERE id = ANY($1::uuid[])`, [prefixes])).map(
      (r) => r.id,
    ),
  );
  let orphaned = 0;
  for (const prefix of prefixes.filter((p) => !known.has(p))) {
    for (const key of await storage.list(prefix)) {
      await storage.delete(key);
      orphaned++;
    }
  }
  const replaced = await select<{ id: string; server: string; replaced_database: string }>(
    ctx,
    `SELECT id, server, replaced_database FROM store_restores
      WHERE state = 'completed' AND drop_after <= now() AND dropped_at IS NULL AND replaced_database IS NOT NULL LIMIT 100`,
    [],
  );
  let databases = 0;
  for (const r of replaced) {
    try {
      await withClient(serverByKey(ctx, r.server).adminUrl, (client) =>
        client.query(`DROP DATABASE IF EXISTS ${ident(r.replaced_database)} WITH (FORCE)`),
      );
      await run(ctx, `UPDATE store_restores SET dropped_at = now(), updated_at = now() WHERE id = $1::uuid`, [r.id]);
      databases++;
    } catch (err) {
      logger.warn({ restoreId: r.id, err: (err as Error).message }, 'could not drop a replaced database');
    }
  }
  return { archives: expired.length + orphaned, databases };
}

const perServer = new Map<string, Semaphore>();

/**
 * The backups queue's processor: at most BACKUPS_PER_SERVER backups and restores per tenant server in this
 * worker process at once (the queue's concurrency lets several servers' jobs run side by side).
 */
export async function processBackupJob(ctx: AppContext, data: JobPayloads['backups']) {
  const [row] = await select<{ server: string | null }>(
    ctx,
    data.kind === 'backup'
      ? `SELECT d.server FROM store_backups b JOIN store_databases d ON d.store_id = b.store_id WHERE b.id = $1::uuid`
      : `SELECT d.server FROM store_restores r JOIN store_databases d ON d.store_id = r.store_id WHERE r.id = $1::uuid`,
    [data.id],
  );
  const key = row?.server ?? 'external';
  let gate = perServer.get(key);
  if (!gate) perServer.set(key, (gate = new Semaphore(ctx.config.backups.perServer, 100_000)));
  return gate.run<Record<string, unknown>>(() =>
    data.kind === 'backup' ? processBackup(ctx, data.id) : processRestore(ctx, data.id),
  );
}
