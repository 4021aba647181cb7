import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { QueryTypes } from 'sequelize';
import { getRun } from '../../src/migrations/migration-runs.service';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { useSuite } from '../helpers/suite';
import { dropStoresAfterwards, makeStores, marks, tenantMigrationsWithOneMore } from '../helpers/tenant-migrations';
import type { TestStore } from '../helpers/tenants';
import { killAllWorkers, spawnWorker } from '../helpers/worker-process';

/**
 * The fleet migration commands of `tenantry` (the real command line in a child process), with a worker process
 * driving the runs they start: the dry run's listing, following a run, exit codes, and attaching again.
 */
let migration: { dir: string; version: number; fileName: string };
const t = useSuite('migration-cli', (s) => {
  migration = tenantMigrationsWithOneMore(s);
  return { TENANT_MIGRATIONS_DIR: migration.dir };
});
let ownerId: string;
const root = path.join(__dirname, '..', '..');

beforeAll(async () => {
  t.defer('the worker processes', killAllWorkers);
  spawnWorker(t, { TENANT_MIGRATIONS_DIR: migration.dir, TENANT_MIGRATE_ON_START: 'off' });
  ownerId = (await registerUser(t.app)).user.id;
});

interface Cli {
  stdout: () => string;
  stderr: () => string;
  code: Promise<number | null>;
  kill: () => void;
}

/** `tenantry …` in a child process, on this suite's master DB, Redis prefix and tenant migrations. */
function cli(args: string[]): Cli {
  const child = t.spawn(process.execPath, [path.join(root, 'bin', 'tenantry.js'), ...args], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: t.db.url,
      REDIS_PREFIX: t.ctx.redisPrefix,
      TENANT_MIGRATIONS_DIR: migration.dir,
      TENANT_MIGRATE_ON_START: 'off',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  return { stdout: () => stdout, stderr: () => stderr, code, kill: () => child.kill('SIGKILL') };
}

async function finished(c: Cli) {
  return { code: await c.code, stdout: c.stdout(), stderr: c.stderr() };
}

const runCount = async () =>
  (
    await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM migration_runs', {
      type: QueryTypes.SELECT,
    })
  )[0].n;

describe('tenantry tenants:*', () => {
  dropStoresAfterwards(() => t);
  let fleet: TestStore[];

  test('tenants:migrate --dry-run lists what would be applied to which store, starts nothing, exits 0', async () => {
    fleet = await makeStores(t, ownerId, ['slow', 'slow']);
    const res = await finished(
      cli(['tenants:migrate', '--dry-run', '--canary', '1', '--stores', fleet.map((s) => s.id).join(',')]),
    );
    expect(res).toMatchObject({ code: 0, stderr: '' });
    const lines = res.stdout.trim().split('\n');
    expect(lines[0]).toBe(
      `Dry run: target version ${migration.version}; 2 of 2 stores to migrate, 0 already there; 4 per server. Nothing was changed.`,
    );
    expect(lines.slice(1)).toEqual([
      expect.stringMatching(
        new RegExp(
          `^  ${fleet[0].id}  \\S+  ${migration.version - 1} -> ${migration.version}  ${migration.fileName}  \\(canary\\)$`,
        ),
      ),
      expect.stringMatching(
        new RegExp(`^  ${fleet[1].id}  \\S+  ${migration.version - 1} -> ${migration.version}  ${migration.fileName}$`),
      ),
    ]);
    expect(await runCount()).toBe(0);
    for (const s of fleet) expect(await marks(s)).toBe(0);
  });

  test('a killed tenants:migrate leaves the run going; tenants:run attaches again and exits 0 when every store is there', async () => {
    // The second store's migration waits on this lock: the run is still going when the command attaches.
    const blocker = await t.pgClient(fleet[1].connection);
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE stores IN ACCESS EXCLUSIVE MODE');
    const started = cli(['tenants:migrate', '--per-server', '1', '--stores', fleet.map((s) => s.id).join(',')]);
    const runId = await eventually(async () => {
      const id = /Run ([0-9a-f-]{36}) started/.exec(started.stdout())?.[1];
      if (!id) throw new Error(`not started yet: ${started.stdout()} ${started.stderr()}`);
      return id;
    }, 30_000);
    started.kill();
    await started.code;

    const attached = cli(['tenants:run', runId]);
    await eventually(async () => {
      if (!attached.stdout().includes(`Run ${runId}: target version ${migration.version}, 2 stores, running`)) {
        throw new Error(`not attached yet: ${attached.stdout()} ${attached.stderr()}`);
      }
    }, 30_000);
    await eventually(async () =>
      expect(await getRun(t.ctx, runId)).toMatchObject({ state: 'running', migrated: 1, pending: 1 }),
    );
    await blocker.query('ROLLBACK');
    const res = await finished(attached);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain(`Run ${runId} completed: 2 migrated, 0 skipped, 0 failed, 0 pending.`);
    for (const s of fleet) expect(await marks(s)).toBe(1);
  });

  test('exit code 2 when stores failed, each failure printed; 1 for an unknown run or a refused change', async () => {
    const [bad] = await makeStores(t, ownerId, ['fail']);
    const res = await finished(cli(['tenants:migrate', '--stores', bad.id]));
    expect(res.code).toBe(2);
    expect(res.stdout).toContain(`failed: store ${bad.id} on `);
    expect(res.stdout).toMatch(/Run \S+ completed: 0 migrated, 0 skipped, 1 failed, 0 pending\./);
    const runId = /Run ([0-9a-f-]{36}) started/.exec(res.stdout)![1];

    const unknown = await finished(cli(['tenants:run', randomUUID()]));
    expect(unknown).toMatchObject({ code: 1, stderr: 'error: No such migration run\n' });
    const refused = await finished(cli(['tenants:pause', runId]));
    expect(refused).toMatchObject({ code: 1, stderr: 'error: The run is completed: it cannot be paused\n' });
  });
});
