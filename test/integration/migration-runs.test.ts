import { randomUUID } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { QueryTypes } from 'sequelize';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { SECOND_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import {
  databaseVersion,
  dropStoresAfterwards,
  makeStores,
  marks,
  rowStates as states,
  tenantMigrationsWithOneMore,
} from '../helpers/tenant-migrations';
import type { TestStore } from '../helpers/tenants';

/**
 * Fleet migration runs (POST /api/admin/tenants/migrate and the run's routes), with the in-process worker
 * driving them: a temporary tenant migration (see tenant-migrations.ts) reaching stores on two tenant servers.
 */
let migration: { dir: string; version: number; fileName: string };
const t = useSuite('migration-runs', (s) => {
  migration = tenantMigrationsWithOneMore(s);
  return { WORKER: 'on', WORKER_LOCK_MS: '3000', TENANT_MIGRATIONS_DIR: migration.dir };
});
let admin: Awaited<ReturnType<typeof registerAdmin>>;
let ownerId: string;

beforeAll(async () => {
  admin = await registerAdmin(t);
  ownerId = (await registerUser(t.app)).user.id;
});

const post = (path: string, body: object = {}) =>
  request(t.app).post(`/api/admin/tenants/migrate${path}`).set(auth(admin.token)).send(body);
const get = (path: string) => request(t.app).get(`/api/admin/tenants/migrate${path}`).set(auth(admin.token));

const stores = (names: string[], server?: string) => makeStores(t, ownerId, names, server);

async function start(body: object): Promise<string> {
  const res = await post('', body).expect(202);
  expect(res.body).toEqual({ runId: expect.any(String) });
  return res.body.runId as string;
}

/** Wait for the run to reach one of `states` (the worker drives it). */
async function until(runId: string, states: string[], timeoutMs = 20_000) {
  return eventually(async () => {
    const res = await get(`/${runId}`).expect(200);
    if (!states.includes(res.body.state)) throw new Error(`run is ${JSON.stringify(res.body)}`);
    return res.body;
  }, timeoutMs);
}

const ids = (list: TestStore[]) => list.map((s) => s.id);
const dbVersion = databaseVersion;
const recorded = async (s: TestStore) =>
  (await t.ctx.master.models.StoreDatabase.findByPk(s.id, { rejectOnEmpty: true })).schemaVersion;
const rowStates = (runId: string) => states(t, runId);

describe('a dry run', () => {
  dropStoresAfterwards(() => t);
  test('lists what would be applied to which store and changes nothing', async () => {
    const [a, b] = await stores(['dry', 'dry']);
    const res = await post('', { stores: ids([a, b]), canary: 1, dryRun: true }).expect(200);
    expect(res.body).toMatchObject({
      dryRun: true,
      targetVersion: migration.version,
      total: 2,
      toMigrate: 2,
      skipped: 0,
      canary: [a.id],
    });
    expect(res.body.stores).toEqual([
      {
        storeId: a.id,
        server: expect.any(String),
        canary: true,
        fromVersion: migration.version - 1,
        toVersion: migration.version,
        migrations: [migration.fileName],
      },
      {
        storeId: b.id,
        server: expect.any(String),
        canary: false,
        fromVersion: migration.version - 1,
        toVersion: migration.version,
        migrations: [migration.fileName],
      },
    ]);
    const [{ n }] = await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM migration_runs', {
      type: QueryTypes.SELECT,
    });
    expect(n).toBe(0);
    for (const s of [a, b]) {
      expect(await dbVersion(s)).toBe(migration.version - 1);
      expect(await recorded(s)).toBe(migration.version - 1);
    }
  });
});

describe('options', () => {
  test('stores or canaries that are not active stores with a ready database: 400 naming each', async () => {
    const unknown = randomUUID();
    const res = await post('', { stores: [unknown], dryRun: true });
    expectProblem(res, 400, 'VALIDATION_FAILED');
    expect(res.body.errors).toEqual([
      { path: 'stores.0', message: `${unknown} is not an active store with a ready database` },
    ]);
    const canary = await post('', { canary: [unknown] });
    expectProblem(canary, 400, 'VALIDATION_FAILED');
    expect(canary.body.errors).toEqual([{ path: 'canary.0', message: expect.stringContaining(unknown) }]);
    expectProblem(await post('', { perServer: 0 }), 400, 'VALIDATION_FAILED');
    expectProblem(await get(`/${randomUUID()}/stores?state=done`), 400, 'VALIDATION_FAILED');
    const [{ n }] = await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM migration_runs', {
      type: QueryTypes.SELECT,
    });
    expect(n).toBe(0);
  });
});

describe('a run', () => {
  dropStoresAfterwards(() => t);
  test('brings every store on both servers to the new version once, skips those already there, and tells it', async () => {
    const fleet = [...(await stores(['a', 'b'])), ...(await stores(['c'], SECOND_SERVER_URL))];
    const runId = await start({ stores: ids(fleet) });
    const run = await until(runId, ['completed']);
    expect(run).toEqual({
      runId,
      state: 'completed',
      targetVersion: migration.version,
      total: 3,
      pending: 0,
      migrated: 3,
      skipped: 0,
      failed: 0,
      startedAt: expect.any(String),
      finishedAt: expect.any(String),
      failures: [],
    });
    for (const s of fleet) {
      expect(await marks(s)).toBe(1);
      expect(await dbVersion(s)).toBe(migration.version);
      expect(await recorded(s)).toBe(migration.version);
    }
    // Per store, paged.
    const page1 = await get(`/${runId}/stores?limit=2`).expect(200);
    expect(page1.body.items).toHaveLength(2);
    const page2 = await get(`/${runId}/stores?limit=2&cursor=${page1.body.nextCursor}`).expect(200);
    expect(page2.body.nextCursor).toBeNull();
    const all = [...page1.body.items, ...page2.body.items];
    expect(all.map((i: { storeId: string }) => i.storeId).sort()).toEqual(ids(fleet).sort());
    for (const item of all) {
      expect(item).toEqual({
        storeId: expect.any(String),
        state: 'migrated',
        fromVersion: migration.version - 1,
        toVersion: migration.version,
        ms: expect.any(Number),
        error: null,
      });
    }
    expect((await get(`/${runId}/stores?state=failed`).expect(200)).body).toEqual({ items: [], nextCursor: null });

    // The admin list shows the schema version; the audit log the start and the end.
    const tenants = await request(t.app).get('/api/admin/tenants?limit=100').set(auth(admin.token)).expect(200);
    expect(tenants.body.items.find((i: { id: string }) => i.id === fleet[0].id).database).toMatchObject({
      schemaVersion: migration.version,
      lastMigrationError: null,
    });
    const audited = await t.ctx.master.sequelize.query<{ action: string }>(
      `SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id`,
      {
        bind: [runId],
        type: QueryTypes.SELECT,
      },
    );
    expect(audited.map((a) => a.action)).toEqual(['migration_run.started', 'migration_run.finished']);

    // Again: every store is at the target in the master's records, skipped without a connection.
    const again = await start({ stores: ids(fleet) });
    expect(await until(again, ['completed'])).toMatchObject({ total: 3, migrated: 0, skipped: 3, failed: 0 });
    for (const s of fleet) expect(await marks(s)).toBe(1);

    // On /metrics: runs by state, and the latest run's stores by state.
    const metrics = (await request(t.app).get('/metrics').set(auth(admin.token)).expect(200)).text;
    expect(metrics).toMatch(/^tenantry_migration_runs\{state="completed"\} 2$/m);
    expect(metrics).toMatch(/^tenantry_migration_runs\{state="running"\} 0$/m);
    expect(metrics).toMatch(/^tenantry_migration_run_stores\{state="skipped"\} 3$/m);
    expect(metrics).toMatch(/^tenantry_migration_run_stores\{state="migrated"\} 0$/m);
  });

  test('one active run at a time: 409 MIGRATION_RUN_ACTIVE with its runId; 404 for an unknown run', async () => {
    const slow = await stores(['slow', 'slow']);
    const runId = await start({ stores: ids(slow), perServer: 1 });
    const refused = await post('', {});
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ code: 'MIGRATION_RUN_ACTIVE', status: 409, runId });
    expect(refused.headers['content-type']).toMatch(/^application\/problem\+json/);
    await until(runId, ['completed']);
    expectProblem(await get(`/${randomUUID()}`), 404, 'NOT_FOUND');
    expectProblem(await get('/no-such-run'), 404, 'NOT_FOUND');
    expectProblem(await post(`/${randomUUID()}/pause`), 404, 'NOT_FOUND');
  });

  test('a canary failing fails the run before any other store is started', async () => {
    const [bad, ...others] = await stores(['fail', 'x']);
    const runId = await start({ stores: ids([bad, ...others]), canary: [bad.id] });
    const run = await until(runId, ['failed']);
    expect(run).toMatchObject({
      state: 'failed',
      failed: 1,
      migrated: 0,
      pending: 1,
      failures: [{ storeId: bad.id, error: expect.stringContaining('refuses') }],
    });
    expect(await rowStates(runId)).toEqual({ [bad.id]: 'failed', [others[0].id]: 'pending' });
    for (const s of others) expect(await marks(s)).toBe(0);
    const tenants = await request(t.app).get('/api/admin/tenants?limit=100').set(auth(admin.token)).expect(200);
    expect(tenants.body.items.find((i: { id: string }) => i.id === bad.id).database).toMatchObject({
      schemaVersion: migration.version - 1,
      lastMigrationError: expect.stringContaining('refuses'),
    });
  });

  test('more failures than maxFailures stop the run', async () => {
    const fleet = await stores(['fail', 'fail', 'ok']);
    const runId = await start({ stores: ids(fleet), perServer: 1, maxFailures: 1 });
    const run = await until(runId, ['failed']);
    expect(run).toMatchObject({ failed: 2, migrated: 0, pending: 1 });
    for (const s of fleet.slice(2)) expect(await marks(s)).toBe(0);
  });
});

describe('TENANT_MIGRATE_ON_START', () => {
  dropStoresAfterwards(() => t);
  test('instances starting with tenant migrations newer than the fleet start one run between them; restarted, none', async () => {
    await stores(['behind']);
    // A deploy with one more tenant migration than every run so far.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-tenant-migrations-'));
    t.defer('the newer tenant migrations', () => rmSync(dir, { recursive: true, force: true }));
    cpSync(migration.dir, dir, { recursive: true });
    writeFileSync(path.join(dir, `${String(migration.version + 1).padStart(4, '0')}_noop.sql`), 'SELECT 1;\n');
    const count = async () =>
      (
        await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM migration_runs', {
          type: QueryTypes.SELECT,
        })
      )[0].n;
    const before = await count();
    const env = { TENANT_MIGRATE_ON_START: 'on', TENANT_MIGRATIONS_DIR: dir };
    await Promise.all([t.instance(env), t.instance(env), t.instance(env)]);
    expect(await count()).toBe(before + 1);
    const [{ id, requestedBy, targetVersion }] = await t.ctx.master.sequelize.query<{
      id: string;
      requestedBy: string;
      targetVersion: number;
    }>(
      `SELECT id, requested_by AS "requestedBy", target_version AS "targetVersion" FROM migration_runs ORDER BY created_at DESC LIMIT 1`,
      { type: QueryTypes.SELECT },
    );
    expect({ requestedBy, targetVersion }).toEqual({ requestedBy: 'deploy', targetVersion: migration.version + 1 });
    // The suite's worker has the older files: it leaves the run to a worker that has its migrations.
    const queue = t.ctx.queues.get('tenant-migrations');
    await eventually(async () => {
      const job = (await queue.getJobs(['delayed', 'failed', 'wait', 'active'])).find((j) => j.data.runId === id);
      expect(job?.failedReason).toContain(
        `stop at version ${migration.version}; the run needs ${migration.version + 1}`,
      );
    }, 10_000);
    expect(await get(`/${id}`).expect(200)).toMatchObject({ body: { state: 'queued', migrated: 0, failed: 0 } });
    await post(`/${id}/stop`).expect(200);
    // Stopped, the version has no run: the next start makes one; with a run made for it, a start makes none.
    await t.instance(env);
    expect(await count()).toBe(before + 2);
    await t.instance(env);
    expect(await count()).toBe(before + 2);
  });
});
