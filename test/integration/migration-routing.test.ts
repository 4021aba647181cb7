import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { Express } from 'express';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite, type Instance, type SuiteResources } from '../helpers/suite';
import { databaseVersion, dropStoresAfterwards, makeStores, marks } from '../helpers/tenant-migrations';
import type { TestStore } from '../helpers/tenants';
import { migrationFiles, migrationsDir } from '../../src/db/migrate';

/**
 * Store requests and tenant migrations: a store being migrated answers after its migration (held up to 2 s) or
 * 503 TENANT_MIGRATING with Retry-After, other stores are untouched; a store below the code's minimum schema
 * is migrated before it is served (on its first request, on resume, on restore).
 */
let migration: { dir: string; version: number };

/** The code's tenant migrations plus one that marks each application and sleeps per the store's name. */
function migrationsWithOneMore(s: SuiteResources) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-routing-migrations-'));
  s.defer('the temporary tenant migrations', () => rmSync(dir, { recursive: true, force: true }));
  const files = migrationFiles(migrationsDir('tenant'));
  for (const f of files) copyFileSync(path.join(migrationsDir('tenant'), f.fileName), path.join(dir, f.fileName));
  const version = Math.max(...files.map((f) => f.version)) + 1;
  writeFileSync(
    path.join(dir, `${String(version).padStart(4, '0')}_routing_test.sql`),
    `CREATE TABLE IF NOT EXISTS fleet_marks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
INSERT INTO fleet_marks DEFAULT VALUES;
SELECT pg_sleep(CASE WHEN name LIKE 'held%' THEN 0.8 WHEN name LIKE 'long%' THEN 5 WHEN name LIKE 'first%' THEN 0.5 ELSE 0 END)
  FROM stores LIMIT 1;
`,
  );
  return { dir, version };
}

const t = useSuite('migration-routing', (s) => {
  migration = migrationsWithOneMore(s);
  // This instance's code serves the shipped schema (TENANT_MIN_SCHEMA=latest: sql/tenant's newest file).
  return { WORKER: 'on', WORKER_LOCK_MS: '3000', TENANT_MIGRATIONS_DIR: migration.dir };
});
let admin: Awaited<ReturnType<typeof registerAdmin>>;
let owner: Awaited<ReturnType<typeof registerUser>>;
/** An instance of newer code: it needs the temporary migration (a rolling deploy's new instance). */
let newer: Instance;

beforeAll(async () => {
  admin = await registerAdmin(t);
  owner = await registerUser(t.app);
  newer = await t.instance({ TENANT_MIGRATIONS_DIR: migration.dir, TENANT_MIN_SCHEMA: String(migration.version) });
});

const stores = (names: string[]) => makeStores(t, owner.user.id, names);
const info = (app: Express, store: TestStore) => request(app).get('/api/store/info').set('X-Store-Id', store.id);
const recorded = async (s: TestStore) =>
  (await t.ctx.master.models.StoreDatabase.findByPk(s.id, { rejectOnEmpty: true })).schemaVersion;

async function startRun(only: TestStore[]): Promise<string> {
  const res = await request(t.app)
    .post('/api/admin/tenants/migrate')
    .set(auth(admin.token))
    .send({ stores: only.map((s) => s.id) })
    .expect(202);
  return res.body.runId as string;
}

async function runState(runId: string): Promise<string> {
  return (await request(t.app).get(`/api/admin/tenants/migrate/${runId}`).set(auth(admin.token)).expect(200)).body
    .state as string;
}

/** Until the run's row of `store` is running (its migration has started). */
const migrating = (runId: string, store: TestStore) =>
  eventually(async () => {
    const res = await request(t.app)
      .get(`/api/admin/tenants/migrate/${runId}/stores?state=running`)
      .set(auth(admin.token))
      .expect(200);
    if (!JSON.stringify(res.body).includes(store.id)) throw new Error('not migrating yet');
  }, 20_000);

describe('during a fleet run', () => {
  dropStoresAfterwards(() => t);

  test("a store's requests are held during its migration and served after it; another store answers meanwhile", async () => {
    const [held, other] = await stores(['held', 'other']);
    await info(t.app, held).expect(200);
    await info(t.app, other).expect(200);
    const runId = await startRun([held]);
    await migrating(runId, held);
    const res = await info(t.app, held);
    expect(res.status).toBe(200);
    // Answered after the migration: the database already has it.
    expect(await databaseVersion(held)).toBe(migration.version);
    const others: number[] = [];
    while (!['completed', 'failed'].includes(await runState(runId))) others.push((await info(t.app, other)).status);
    expect(await runState(runId)).toBe('completed');
    expect(others.filter((s) => s !== 200)).toEqual([]);
  });

  test('a migration longer than the wait answers 503 TENANT_MIGRATING with Retry-After, and is served after it', async () => {
    const [long, other] = await stores(['long', 'other']);
    await info(t.app, long).expect(200);
    const runId = await startRun([long]);
    await migrating(runId, long);
    const res = await info(t.app, long);
    expectProblem(res, 503, 'TENANT_MIGRATING');
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
    // Another store is untouched meanwhile, and so is a new instance's first request to it… once it has its schema.
    await info(t.app, other).expect(200);
    await eventually(async () => {
      if ((await runState(runId)) !== 'completed') throw new Error('still running');
    }, 30_000);
    await info(t.app, long).expect(200);
    expect(await marks(long)).toBe(1);
  });
});

describe('a store below the code’s minimum schema', () => {
  dropStoresAfterwards(() => t);

  test('is migrated on its first request to an instance that needs the newer schema, then served', async () => {
    const [first] = await stores(['first']);
    expect(await recorded(first)).toBeLessThan(migration.version);
    await info(newer.app, first).expect(200);
    expect(await databaseVersion(first)).toBe(migration.version);
    expect(await recorded(first)).toBe(migration.version);
    expect(await marks(first)).toBe(1);
  });

  test('concurrent first requests share one migration', async () => {
    const [first] = await stores(['first']);
    const before = newer.ctx.tenants.stats().migratedOnDemand;
    const answers = await Promise.all(Array.from({ length: 8 }, () => info(newer.app, first)));
    expect(answers.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(newer.ctx.tenants.stats().migratedOnDemand - before).toBe(1);
    expect(await marks(first)).toBe(1);
  });

  test('a suspended store is migrated when it is resumed, before its first request', async () => {
    const [suspended] = await stores(['other']);
    await request(t.app).post(`/api/admin/stores/${suspended.id}/suspend`).set(auth(admin.token)).expect(200);
    expect(await databaseVersion(suspended)).toBeLessThan(migration.version);
    await request(t.app).post(`/api/admin/stores/${suspended.id}/resume`).set(auth(admin.token)).expect(200);
    expect(await databaseVersion(suspended)).toBe(migration.version);
    expect(await recorded(suspended)).toBe(migration.version);
  });

  test('a deleted store is migrated when it is restored, before its first request', async () => {
    // An owner of one store: the plan's store limit leaves room to restore it.
    const own = await registerUser(t.app);
    const [deleted] = await makeStores(t, own.user.id, ['other']);
    await request(t.app).delete(`/api/stores/${deleted.id}`).set(auth(own.token)).expect(202);
    await request(t.app).post(`/api/stores/${deleted.id}/restore`).set(auth(own.token)).expect(200);
    expect(await databaseVersion(deleted)).toBe(migration.version);
    await info(newer.app, deleted).expect(200);
    expect(await marks(deleted)).toBe(1);
  });
});
