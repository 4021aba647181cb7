import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import {
  backupJobId,
  endAbandoned,
  processBackup,
  processRestore,
  queueBackup,
  restoreJobId,
} from '../../src/backups/backups.service';
import { listTenantTables } from '../../src/backups/tenant-tables';
import { withClient } from '../../src/db/pg-client';
import { ident } from '../../src/db/tenant-server-admin';
import { QueueName } from '../../src/queue/queues';
import { registerUser } from '../helpers/app';
import { adminQuery, urlFor } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';
import { killAllWorkers, spawnWorker, type WorkerProcess } from '../helpers/worker-process';

/**
 * Backups and restores run by worker processes (`npm run worker`) that are SIGKILLed in the middle. Nothing
 * is lost: a backup cut off is made again by the worker its job is handed to, or (its job lost) ended as
 * failed by the schedule's sweep with its unfinished archive removed; a restore cut off leaves the store on
 * its database, unchanged, its half-built database is dropped (by the next attempt of its job, else by the
 * sweep), and the store can be restored again afterwards.
 */

const backupDir = mkdtempSync(path.join(tmpdir(), 'tenantry-backups-faults-'));
// No worker in this process: the jobs are run by the worker processes the tests start and kill.
const t = useSuite('backups_faults', { BACKUP_DIR: backupDir });
const workerEnv = { BACKUP_DIR: backupDir, TENANT_MIGRATE_ON_START: 'off' };
const PRODUCTS = 50_000;

let owner: Awaited<ReturnType<typeof registerUser>>;
let store: TestStore;

beforeAll(async () => {
  t.defer('the backup directory', () => rmSync(backupDir, { recursive: true, force: true }));
  // The databases restores made (the store's first one goes with the test tenants), while the master is open.
  t.defer('the restored databases', async () => {
    const made = await t.ctx.master.sequelize.query<{ name: string }>(
      `SELECT new_database AS name FROM store_restores WHERE new_database IS NOT NULL`,
      { type: QueryTypes.SELECT },
    );
    for (const { name } of made) await adminQuery(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  });
  // Stopped before the app and its database go.
  t.defer('the worker processes', killAllWorkers);
  owner = await registerUser(t.app);
  store = await createActiveStore(t, { ownerId: owner.user.id });
  await tenantQuery(
    store,
    `INSERT INTO products (sku, name, description, price_cents)
     SELECT 'sku-' || i, 'Product ' || i, repeat('A fine product. ', 4) || i, i FROM generate_series(1, $1::int) i`,
    [PRODUCTS],
  );
});

const one = async <R extends object>(sql: string, bind: unknown[] = []) =>
  (await t.ctx.master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT }))[0];

const backupRow = (id: string) =>
  one<{ state: string; error: string | null; manifest: { tables: { name: string; rows: number }[] } | null }>(
    `SELECT state, error, manifest FROM store_backups WHERE id = $1::uuid`,
    [id],
  );

const restoreRow = (id: string) =>
  one<{ state: string; error: string | null; new_database: string | null }>(
    `SELECT state, error, new_database FROM store_restores WHERE id = $1::uuid`,
    [id],
  );

const currentDatabase = async () =>
  (await one<{ name: string }>(`SELECT database_name AS name FROM store_databases WHERE store_id = $1::uuid`, [
    store.id,
  ]))!.name;

const databaseExists = async (name: string) =>
  (await adminQuery(`SELECT 1 FROM pg_database WHERE datname = '${name.replace(/'/g, "''")}'`)).rowCount === 1;

/** The store's archive directory: whole archives and unfinished writes (`.partial`). */
const archiveFiles = () =>
  existsSync(path.join(backupDir, store.id)) ? readdirSync(path.join(backupDir, store.id)) : [];

/** Sessions of `database` busy with a statement like `pattern`, waiting on a lock or not. */
async function sessions(database: string, pattern: string, waitingOnLock: boolean): Promise<number> {
  const { rows } = await adminQuery(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = '${database.replace(/'/g, "''")}' AND query ILIKE '${pattern}' AND state = 'active'
        AND ${waitingOnLock ? "wait_event_type = 'Lock'" : 'true'}`,
  );
  return (rows[0] as { n: number }).n;
}

/** Remove a job once the worker that died holding it has lost its lock: the job lost, as after a Redis loss. */
async function loseJob(jobId: string): Promise<void> {
  const queue = t.ctx.queues.get(QueueName.backups);
  await eventually(async () => {
    const job = await queue.getJob(jobId);
    if (job) await job.remove();
  }, 15_000);
}

async function requestRestore(backupId: string): Promise<string> {
  const res = await request(t.app)
    .post(`/api/stores/${store.id}/backups/${backupId}/restore`)
    .set(auth(owner.token))
    .expect(202);
  return (res.body.jobId as string).replace(/^restore-/, '');
}

const productCount = async (database: string) =>
  Number(
    (
      await withDatabase(database, (c) =>
        c.query<{ n: string }>(`SELECT count(*) AS n FROM products WHERE deleted_at IS NULL`),
      )
    ).rows[0].n,
  );

const withDatabase = <T>(database: string, fn: (c: pg.ClientBase) => Promise<T>) => withClient(urlFor(database), fn);

/** The tenant schema's indexes and constraints, as the catalog describes them. */
const schema = (database: string) =>
  withDatabase(database, async (c) => ({
    indexes: (await c.query(`SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname`)).rows,
    constraints: (
      await c.query(
        `SELECT conrelid::regclass::text AS table, conname, contype, convalidated, pg_get_constraintdef(c.oid) AS def
           FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
          WHERE n.nspname = 'public' ORDER BY conrelid::regclass::text, conname`,
      )
    ).rows,
  }));

let backupId: string;
/** The worker process running now (each test kills it, and the next one starts another). */
let worker: WorkerProcess;

describe('a worker SIGKILLed in the middle', () => {
  test('of two backups: the one whose job comes back is made again, whole; the one whose job is lost ends failed; no partial archive stays', async () => {
    // The last table held under an exclusive lock: both backups stop there, after writing the products.
    const tables = (await withDatabase(store.database, (c) => listTenantTables(c))).map((x) => x.name);
    const last = tables[tables.length - 1];
    expect(tables.indexOf('products')).toBeLessThan(tables.length - 1);
    const holder = await t.pgClient({ connectionString: urlFor(store.database) });
    await holder.query(`BEGIN; LOCK TABLE public.${ident(last)} IN ACCESS EXCLUSIVE MODE`);

    const first = spawnWorker(t, workerEnv);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const res = await request(t.app).post(`/api/stores/${store.id}/backups`).set(auth(owner.token)).expect(202);
      ids.push(res.body.backupId as string);
    }
    const [lost, handedOver] = ids;
    await eventually(async () => {
      const waiting = await sessions(store.database, 'COPY%TO STDOUT%', true);
      const partial = archiveFiles().filter((f) => f.endsWith('.partial'));
      if (waiting < 2 || partial.length < 2)
        throw new Error(`${waiting} COPY waiting, ${partial.length} partial archives (worker: ${first.output()})`);
    }, 30_000);
    await first.kill('SIGKILL');

    // Cut off: nothing completed, no archive under a backup's key.
    for (const id of ids) expect((await backupRow(id))?.state).toBe('running');
    expect(archiveFiles().filter((f) => ids.some((id) => f === `${id}.tbk`))).toEqual([]);

    await loseJob(backupJobId(lost));
    await holder.query('COMMIT');
    worker = spawnWorker(t, workerEnv);
    const done = await eventually(async () => {
      const row = await backupRow(handedOver);
      if (row?.state !== 'completed') throw new Error(`backup ${JSON.stringify(row)} (worker: ${worker.output()})`);
      return row;
    }, 30_000);
    expect(done.manifest!.tables.find((x) => x.name === 'products')?.rows).toBe(PRODUCTS);
    expect(archiveFiles()).toContain(`${handedOver}.tbk`);

    // The lost one is still `running` until the sweep (part of the schedule-backups task) ends it.
    expect((await backupRow(lost))?.state).toBe('running');
    expect(archiveFiles()).toContain(`${lost}.tbk.partial`);
    expect((await endAbandoned(t.ctx, 0)).abandoned).toBe(1);
    const ended = await backupRow(lost);
    expect(ended).toMatchObject({ state: 'failed', manifest: null });
    expect(ended!.error).toMatch(/^interrupted: .*job is gone/);
    expect(archiveFiles().filter((f) => f.startsWith(lost))).toEqual([]);
    expect(archiveFiles().filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect((await endAbandoned(t.ctx, 0)).abandoned).toBe(0);
    backupId = handedOver;
  });

  test('of a restore, during the copy: the store keeps its database, unchanged; the next attempt drops the half-built one and fails the restore', async () => {
    // Written after the backup: a restore would take it away.
    await tenantQuery(store, `INSERT INTO products (sku, name, price_cents) VALUES ('late', 'Late product', 1)`);
    // A net under the poll: the switch locks the store's database row, held here, so a copy too quick to be seen
    // still leaves the restore short of its switch when the worker is killed.
    const holder = await t.pgClient({ connectionString: t.db.url });
    await holder.query('BEGIN');
    await holder.query(`SELECT 1 FROM store_databases WHERE store_id = $1::uuid FOR UPDATE`, [store.id]);
    const restoreId = await requestRestore(backupId);
    // Polled closely: the copy of the products lasts a fraction of a second.
    let halfBuilt: string | null = null;
    const deadline = Date.now() + 30_000;
    while (!halfBuilt) {
      const row = await restoreRow(restoreId);
      const copying = row?.new_database && (await sessions(row.new_database, 'COPY%FROM STDIN%', false)) > 0;
      if (copying || (await sessions(t.db.name, '%FROM store_databases%FOR UPDATE%', true)) > 0)
        halfBuilt = row!.new_database;
      else if (row?.state !== 'queued' && row?.state !== 'running') throw new Error(`restore ${JSON.stringify(row)}`);
      else if (Date.now() > deadline) throw new Error('the restore never began its copy');
    }
    // The worker that took the job is the one the first test left running.
    await worker.kill('SIGKILL');
    await holder.query('ROLLBACK');
    expect((await restoreRow(restoreId))?.state).toBe('running');
    expect(await currentDatabase()).toBe(store.database);
    expect(await productCount(store.database)).toBe(PRODUCTS + 1);

    worker = spawnWorker(t, workerEnv);
    const failed = await eventually(async () => {
      const row = await restoreRow(restoreId);
      if (row?.state !== 'failed') throw new Error(`restore ${JSON.stringify(row)} (worker: ${worker.output()})`);
      return row;
    }, 30_000);
    expect(failed.error).toMatch(/^interrupted: .*the store kept its database/);
    expect(await databaseExists(halfBuilt)).toBe(false);
    expect(await currentDatabase()).toBe(store.database);
    expect(await productCount(store.database)).toBe(PRODUCTS + 1);
  });

  test('of a restore, at the switch, its job then lost: the sweep drops the built database and fails it; a new restore is accepted and runs', async () => {
    // The switch locks the store's database row: held here, the restore stops right before it.
    const holder = await t.pgClient({ connectionString: t.db.url });
    await holder.query('BEGIN');
    await holder.query(`SELECT 1 FROM store_databases WHERE store_id = $1::uuid FOR UPDATE`, [store.id]);
    const restoreId = await requestRestore(backupId);
    await eventually(async () => {
      const waiting = await sessions(t.db.name, '%FROM store_databases%FOR UPDATE%', true);
      if (waiting < 1) throw new Error(`restore ${JSON.stringify(await restoreRow(restoreId))}`);
    }, 30_000);
    await worker.kill('SIGKILL');
    await holder.query('ROLLBACK');
    const built = (await restoreRow(restoreId))!;
    expect(built.state).toBe('running');
    expect(await databaseExists(built.new_database!)).toBe(true);
    expect(await currentDatabase()).toBe(store.database);

    await loseJob(restoreJobId(restoreId));
    expect((await endAbandoned(t.ctx, 0)).abandoned).toBe(1);
    const ended = await restoreRow(restoreId);
    expect(ended?.state).toBe('failed');
    expect(ended?.error).toMatch(/^interrupted: .*job is gone/);
    expect(await databaseExists(built.new_database!)).toBe(false);
    expect(await currentDatabase()).toBe(store.database);
    expect(await productCount(store.database)).toBe(PRODUCTS + 1);

    // Not blocked by a row left running: a new restore of the handed-over backup runs to its end, whole.
    const original = await schema(store.database);
    const again = await requestRestore(backupId);
    await processRestore(t.ctx, again);
    expect((await restoreRow(again))?.state).toBe('completed');
    const restored = await currentDatabase();
    expect(restored).not.toBe(store.database);
    expect(await productCount(restored)).toBe(PRODUCTS);
    // The keys of the large table were set aside during the copy and put back: the same schema as the original's.
    expect(await schema(restored)).toEqual(original);

    // Its job coming back after the switch (the worker killed right after it) closes the replaced database again.
    await adminQuery(`ALTER DATABASE ${ident(store.database)} WITH ALLOW_CONNECTIONS true`);
    expect(await processRestore(t.ctx, again)).toEqual({ skipped: 'completed' });
    const { rows } = await adminQuery(`SELECT datallowconn FROM pg_database WHERE datname = '${store.database}'`);
    expect(rows[0]).toEqual({ datallowconn: false });
  });
});

describe('a COPY the server refuses', () => {
  test('fails the restore, not the process running it: the row failed with the reason, the new database dropped', async () => {
    // A store whose database lets through a row the schema forbids (its CHECK dropped): backed up as it is, it
    // cannot be copied into a database with the schema's constraints.
    const other = await createActiveStore(t, { ownerId: owner.user.id });
    await withDatabase(other.database, (c) =>
      c.query(`ALTER TABLE products DROP CONSTRAINT products_price_cents_check`),
    );
    await tenantQuery(
      other,
      `INSERT INTO products (sku, name, price_cents)
       SELECT 'sku-' || i, 'Product ' || i, CASE WHEN i = 15000 THEN -1 ELSE i END FROM generate_series(1, 30000) i`,
    );
    const id = await queueBackup(t.ctx, other.id, 'manual', owner.user.id);
    await processBackup(t.ctx, id);
    const res = await request(t.app)
      .post(`/api/stores/${other.id}/backups/${id}/restore`)
      .set(auth(owner.token))
      .expect(202);
    const restoreId = (res.body.jobId as string).replace(/^restore-/, '');
    await expect(processRestore(t.ctx, restoreId)).rejects.toThrow(/products_price_cents_check/);
    const row = await restoreRow(restoreId);
    expect(row).toMatchObject({ state: 'failed', error: expect.stringMatching(/products_price_cents_check/) });
    expect(await databaseExists(row!.new_database!)).toBe(false);
    const [db] = await t.ctx.master.sequelize.query<{ name: string }>(
      `SELECT database_name AS name FROM store_databases WHERE store_id = $1::uuid`,
      { bind: [other.id], type: QueryTypes.SELECT },
    );
    expect(db.name).toBe(other.database);
  });
});
