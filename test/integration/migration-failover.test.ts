import { QueryTypes } from 'sequelize';
import { processMaintenance } from '../../src/maintenance';
import { createRun, getRun } from '../../src/migrations/migration-runs.service';
import { QueueName } from '../../src/queue/queues';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { useSuite } from '../helpers/suite';
import {
  databaseVersion,
  dropStoresAfterwards,
  makeStores,
  marks,
  rowStates,
  tenantMigrationsWithOneMore,
} from '../helpers/tenant-migrations';
import { queryWith } from '../helpers/stores';
import { killAllWorkers, spawnWorker } from '../helpers/worker-process';

/**
 * A fleet migration run driven by worker processes (`npm run worker`), one of them killed in the middle of
 * the run: another worker takes the run over from its rows and finishes it, every store migrated exactly once.
 */
let migration: { dir: string; version: number; fileName: string };
// No worker in this process: the run is driven by the worker processes the test starts.
const t = useSuite('migration-failover', (s) => {
  migration = tenantMigrationsWithOneMore(s);
  return { TENANT_MIGRATIONS_DIR: migration.dir };
});

beforeAll(() => {
  // Stopped before the app and its database go.
  t.defer('the worker processes', killAllWorkers);
});

describe('a worker killed mid-run', () => {
  dropStoresAfterwards(() => t);

  test('SIGKILL: another worker process finishes the run; every store migrated exactly once, none skipped', async () => {
    const ownerId = (await registerUser(t.app)).user.id;
    const fleet = await makeStores(t, ownerId, ['slow', 'slow', 'slow', 'slow', 'slow', 'slow']);
    const workerEnv = { TENANT_MIGRATIONS_DIR: migration.dir, TENANT_MIGRATE_ON_START: 'off' };
    const first = spawnWorker(t, workerEnv);
    const { runId } = await createRun(
      t.ctx,
      { userId: null, label: 'test' },
      { stores: fleet.map((s) => s.id), perServer: 2 },
    );

    // Killed with some stores migrated and others in the middle of their migration. The kill can land between
    // a store's end and the next claim (no row running then); the run must end the same either way.
    await eventually(async () => {
      const states = Object.values(await rowStates(t, runId));
      if (!states.includes('migrated') || !states.includes('running'))
        throw new Error(`run is at ${states.join(', ')}`);
    }, 30_000);
    await first.kill('SIGKILL');
    // A statement the killed worker had already sent (a store's `migrated` update) still runs to its end in its
    // server session; the snapshot is taken once no session on the master is busy, so it is the state it left.
    await eventually(async () => {
      const [{ busy }] = await t.ctx.master.sequelize.query<{ busy: number }>(
        `SELECT count(*)::int AS busy FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'`,
        { type: QueryTypes.SELECT },
      );
      if (busy > 0) throw new Error(`${busy} master sessions still busy`);
    }, 10_000);
    const cut = await rowStates(t, runId);
    expect(Object.values(cut)).toContain('migrated');
    // A store cut off in the middle either rolled back with its session, or had committed its migration (the
    // kill landed before its outcome was recorded; a statement already sent may also finish server-side):
    // once no session of the killed worker holds its lock, its own migrations table says which.
    const cutOff = Object.entries(cut)
      .filter(([, state]) => state === 'running')
      .map(([id]) => fleet.find((s) => s.id === id)!);
    const committedAtCut = new Map<string, boolean>();
    for (const store of cutOff) {
      await eventually(async () => {
        const [{ n }] = await queryWith<{ n: number }>(
          store.connection,
          `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = 7245 AND objid = 1
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
        );
        if (n > 0) throw new Error('the killed worker still migrates this store');
      }, 10_000);
      committedAtCut.set(store.id, (await databaseVersion(store)) >= migration.version);
    }

    const second = spawnWorker(t, workerEnv);
    const run = await eventually(async () => {
      const r = await getRun(t.ctx, runId);
      if (r.state !== 'completed') throw new Error(`run is ${JSON.stringify(r)} (second worker: ${second.output()})`);
      return r;
    }, 40_000);
    expect(run).toMatchObject({ total: 6, migrated: 6, skipped: 0, failed: 0, pending: 0 });
    for (const store of fleet) {
      // The migration's own side effect: once per store, whichever worker got there.
      expect(await marks(store)).toBe(1);
      expect(await databaseVersion(store)).toBe(migration.version);
    }
    const rows = await t.ctx.master.sequelize.query<{ storeId: string; attempt: number; version: number }>(
      `SELECT r.store_id AS "storeId", r.attempt, d.schema_version AS version
         FROM migration_run_stores r JOIN store_databases d ON d.store_id = r.store_id WHERE r.run_id = $1`,
      { bind: [runId], type: QueryTypes.SELECT },
    );
    expect(rows.map((r) => r.version)).toEqual(fleet.map(() => migration.version));
    // The stores cut off in the middle: claimed again if their migration had rolled back with the session;
    // recorded from their own migrations table, never applied again (marks above), if it had committed.
    for (const store of cutOff)
      expect(rows.find((r) => r.storeId === store.id)?.attempt).toBe(committedAtCut.get(store.id) ? 1 : 2);
  });

  test('a run left without a driver (its job gone) gets one from the maintenance sweep, and only one', async () => {
    const ownerId = (await registerUser(t.app)).user.id;
    const fleet = await makeStores(t, ownerId, ['a', 'b']);
    await killAllWorkers();
    const { runId } = await createRun(t.ctx, { userId: null, label: 'test' }, { stores: fleet.map((s) => s.id) });
    const queue = t.ctx.queues.get(QueueName.tenantMigrations);
    const [job] = (await queue.getJobs(['waiting'])).filter((j) => j.data.runId === runId);
    await job.remove();
    expect(await processMaintenance(t.ctx, { task: 'resume-migration-runs' })).toEqual({ resumed: 1 });
    // Its new job waits for a worker: the next sweep leaves it be.
    expect(await processMaintenance(t.ctx, { task: 'resume-migration-runs' })).toEqual({ resumed: 0 });
    expect((await queue.getJobs(['waiting'])).filter((j) => j.data.runId === runId)).toHaveLength(1);
    spawnWorker(t, { TENANT_MIGRATIONS_DIR: migration.dir, TENANT_MIGRATE_ON_START: 'off' });
    const run = await eventually(async () => {
      const r = await getRun(t.ctx, runId);
      if (r.state !== 'completed') throw new Error(`run is ${JSON.stringify(r)}`);
      return r;
    }, 30_000);
    expect(run).toMatchObject({ migrated: 2, failed: 0 });
    for (const store of fleet) expect(await marks(store)).toBe(1);
  });
});
