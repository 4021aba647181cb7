import { randomUUID } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QueryTypes } from 'sequelize';
import { migrationFiles, migrationsDir } from '../../src/db/migrate';
import type { TestApp } from './app';
import { queryWith } from './stores';
import type { SuiteResources } from './suite';
import { createActiveStore, dropTestTenants, type TestStore } from './tenants';

/**
 * The code's tenant migrations plus one more, in a temporary directory (TENANT_MIGRATIONS_DIR), removed at
 * tear-down. The extra migration leaves one row in `fleet_marks` per time it is applied (so a store migrated
 * twice shows two), sleeps 0.4 s in a store named `slow…` and fails in a store named `fail…`.
 */
export function tenantMigrationsWithOneMore(s: SuiteResources): { dir: string; version: number; fileName: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-tenant-migrations-'));
  s.defer('the temporary tenant migrations', () => rmSync(dir, { recursive: true, force: true }));
  const files = migrationFiles(migrationsDir('tenant'));
  for (const f of files) copyFileSync(path.join(migrationsDir('tenant'), f.fileName), path.join(dir, f.fileName));
  const version = Math.max(...files.map((f) => f.version)) + 1;
  const fileName = `${String(version).padStart(4, '0')}_fleet_test.sql`;
  writeFileSync(
    path.join(dir, fileName),
    `CREATE TABLE IF NOT EXISTS fleet_marks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
INSERT INTO fleet_marks DEFAULT VALUES;
SELECT pg_sleep(CASE WHEN (SELECT name FROM stores LIMIT 1) LIKE 'slow%' THEN 0.4 ELSE 0 END);
DO $$ BEGIN
  IF (SELECT name FROM stores LIMIT 1) LIKE 'fail%' THEN RAISE EXCEPTION 'this store refuses the migration'; END IF;
END $$;
`,
  );
  return { dir, version, fileName };
}

/** How many times the extra migration was applied in a store's database (its side effect). */
export async function marks(store: TestStore): Promise<number> {
  const [{ table }] = await queryWith<{ table: string | null }>(
    store.connection,
    `SELECT to_regclass('fleet_marks')::text AS table`,
  );
  return table
    ? (await queryWith<{ n: number }>(store.connection, 'SELECT count(*)::int AS n FROM fleet_marks'))[0].n
    : 0;
}

/** The version the store's own migrations table says. */
export async function databaseVersion(store: TestStore): Promise<number> {
  return (await queryWith<{ v: number }>(store.connection, 'SELECT max(id)::int AS v FROM migrations'))[0].v;
}

/** Each store's state in a run. */
export async function rowStates(t: TestApp, runId: string): Promise<Record<string, string>> {
  const rows = await t.ctx.master.sequelize.query<{ storeId: string; state: string }>(
    `SELECT store_id AS "storeId", state FROM migration_run_stores WHERE run_id = $1`,
    { bind: [runId], type: QueryTypes.SELECT },
  );
  return Object.fromEntries(rows.map((r) => [r.storeId, r.state]));
}

/** Active stores with their own databases (createActiveStore), made one after the other (the run's order). */
export async function makeStores(t: TestApp, ownerId: string, names: string[], server?: string): Promise<TestStore[]> {
  const made: TestStore[] = [];
  for (const name of names)
    made.push(await createActiveStore(t, { ownerId, name: `${name}-${randomUUID().slice(0, 6)}`, server }));
  return made;
}

/**
 * At the end of the calling describe block, drop the store databases made so far: dropping one takes a
 * checkpoint, and a dozen of them would outlast the app's bounded tear-down. The master's rows forget their
 * database names, so the app's tear-down has none left to drop.
 */
export function dropStoresAfterwards(t: () => TestApp): void {
  afterAll(async () => {
    await t().ctx.master.sequelize.query(`UPDATE store_databases SET database_name = NULL WHERE mode = 'managed'`);
    await dropTestTenants();
  });
}
