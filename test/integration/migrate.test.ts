import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import {
  latestSchemaVersion,
  migrateFromRecord,
  MigrationError,
  migrationsDir,
  runMigrations,
} from '../../src/db/migrate';
import { adminQuery, createTestDatabase, type TestDatabase } from '../helpers/db';

const dirs: string[] = [];
const databases: TestDatabase[] = [];
afterAll(async () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  await Promise.all(databases.map((db) => db.drop()));
});

/** A temporary migrations directory holding these files. */
function migrationDir(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'tenantry-migrations-'));
  dirs.push(dir);
  for (const [name, sql] of Object.entries(files)) writeFileSync(path.join(dir, name), sql);
  return dir;
}

async function freshDatabase(label: string): Promise<TestDatabase> {
  const db = await createTestDatabase(label);
  databases.push(db);
  return db;
}

async function query<T extends pg.QueryResultRow = pg.QueryResultRow>(db: TestDatabase, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

const tables = async (db: TestDatabase) =>
  (await query<{ t: string }>(db, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).map(
    (r) => r.t,
  );
const appliedRows = (db: TestDatabase) =>
  query<{ id: number; name: string; hash: string }>(db, 'SELECT id, name, hash FROM migrations ORDER BY id');
const sha1 = (s: string) => createHash('sha1').update(s, 'utf8').digest('hex');

const FILES = {
  '0001_create_widgets.sql': 'CREATE TABLE widgets (id serial PRIMARY KEY, name text NOT NULL);\n',
  '0002_seed_widgets.sql': "INSERT INTO widgets (name) VALUES ('first');\n",
  '0003_create_gadgets.sql': 'CREATE TABLE gadgets (id serial PRIMARY KEY);\n',
};

describe('runMigrations', () => {
  test('applies every file in order on a fresh database and records each with its sha1 checksum', async () => {
    const db = await freshDatabase('mig_fresh');
    const dir = migrationDir(FILES);

    const result = await runMigrations('tenant', { connectionString: db.url }, dir);

    expect(result).toEqual({ applied: ['0_create-migrations-table.sql', ...Object.keys(FILES)], schemaVersion: 3 });
    expect(await tables(db)).toEqual(['gadgets', 'migrations', 'widgets']);
    expect(await query(db, 'SELECT name FROM widgets')).toEqual([{ name: 'first' }]);
    const rows = await appliedRows(db);
    expect(rows.map((r) => [r.id, r.name])).toEqual([
      [0, 'create-migrations-table'],
      [1, 'create_widgets'],
      [2, 'seed_widgets'],
      [3, 'create_gadgets'],
    ]);
    for (const r of rows) expect(r.hash).toMatch(/^[0-9a-f]{40}$/);
    // The checksum covers the file name and its contents.
    expect(rows[1].hash).toBe(sha1('0001_create_widgets.sql' + FILES['0001_create_widgets.sql']));
  });

  test('a second run applies nothing and reports the same schema version', async () => {
    const db = await freshDatabase('mig_rerun');
    const dir = migrationDir(FILES);
    await runMigrations('tenant', { connectionString: db.url }, dir);

    const again = await runMigrations('tenant', { connectionString: db.url }, dir);

    expect(again).toEqual({ applied: [], schemaVersion: 3 });
    expect(await query(db, 'SELECT count(*)::int AS n FROM widgets')).toEqual([{ n: 1 }]);
    expect(await appliedRows(db)).toHaveLength(4);
  });

  test('a new file added later is applied on the next run, alone', async () => {
    const db = await freshDatabase('mig_add');
    const dir = migrationDir(FILES);
    await runMigrations('tenant', { connectionString: db.url }, dir);
    writeFileSync(path.join(dir, '0004_more_widgets.sql'), "INSERT INTO widgets (name) VALUES ('second');");

    expect(await runMigrations('tenant', { connectionString: db.url }, dir)).toEqual({
      applied: ['0004_more_widgets.sql'],
      schemaVersion: 4,
    });
    expect(await query(db, 'SELECT name FROM widgets ORDER BY id')).toEqual([{ name: 'first' }, { name: 'second' }]);
  });

  test('two runners started at once on one database both succeed and apply each file once', async () => {
    const db = await freshDatabase('mig_race');
    const dir = migrationDir({
      ...FILES,
      // Slow enough that the second runner arrives while the first is still working.
      '0004_slow_insert.sql': "SELECT pg_sleep(0.3); INSERT INTO widgets (name) VALUES ('once');\n",
    });

    const [a, b] = await Promise.all([
      runMigrations('tenant', { connectionString: db.url }, dir),
      runMigrations('tenant', { connectionString: db.url }, dir),
    ]);

    expect(a.schemaVersion).toBe(4);
    expect(b.schemaVersion).toBe(4);
    // Between them every file was applied exactly once.
    expect([...a.applied, ...b.applied].sort()).toEqual(
      ['0_create-migrations-table.sql', ...Object.keys(FILES), '0004_slow_insert.sql'].sort(),
    );
    expect(await query(db, "SELECT count(*)::int AS n FROM widgets WHERE name = 'once'")).toEqual([{ n: 1 }]);
    expect(await query(db, "SELECT count(*)::int AS n FROM widgets WHERE name = 'first'")).toEqual([{ n: 1 }]);
    expect(await appliedRows(db)).toHaveLength(5);
  });

  test('refuses to run when an applied file has changed, naming the file, and applies nothing new', async () => {
    const db = await freshDatabase('mig_changed');
    const dir = migrationDir(FILES);
    await runMigrations('tenant', { connectionString: db.url }, dir);
    writeFileSync(path.join(dir, '0002_seed_widgets.sql'), "INSERT INTO widgets (name) VALUES ('edited');\n");
    writeFileSync(path.join(dir, '0004_create_sprockets.sql'), 'CREATE TABLE sprockets (id int);\n');

    const run = runMigrations('tenant', { connectionString: db.url }, dir);
    await expect(run).rejects.toBeInstanceOf(MigrationError);
    await expect(run).rejects.toThrow(/0002_seed_widgets\.sql/);

    expect(await tables(db)).not.toContain('sprockets');
    expect(await query(db, 'SELECT name FROM widgets')).toEqual([{ name: 'first' }]);
    expect(await appliedRows(db)).toHaveLength(4);
  });

  test('a failing file rolls back only itself: earlier files stay applied, later ones are not run', async () => {
    const db = await freshDatabase('mig_fail');
    const dir = migrationDir({
      '0001_create_widgets.sql': FILES['0001_create_widgets.sql'],
      // Creates a table and a row, then fails: none of it may remain.
      '0002_broken.sql':
        "CREATE TABLE half_done (id int);\nINSERT INTO widgets (name) VALUES ('from broken');\nSELECT 1 / 0;\n",
      '0003_create_gadgets.sql': FILES['0003_create_gadgets.sql'],
    });

    const run = runMigrations('tenant', { connectionString: db.url }, dir);
    await expect(run).rejects.toBeInstanceOf(MigrationError);
    await expect(run).rejects.toThrow(/broken.*division by zero/s);

    expect(await tables(db)).toEqual(['migrations', 'widgets']);
    expect(await query(db, 'SELECT count(*)::int AS n FROM widgets')).toEqual([{ n: 0 }]);
    expect((await appliedRows(db)).map((r) => r.id)).toEqual([0, 1]);

    // Fixed, the next run picks up where it stopped.
    writeFileSync(path.join(dir, '0002_broken.sql'), 'CREATE TABLE half_done (id int);\n');
    expect(await runMigrations('tenant', { connectionString: db.url }, dir)).toEqual({
      applied: ['0002_broken.sql', '0003_create_gadgets.sql'],
      schemaVersion: 3,
    });
    expect(await tables(db)).toEqual(['gadgets', 'half_done', 'migrations', 'widgets']);
  });

  test('a connection lost in the middle of a file rejects the run, without crashing the process, and leaves nothing of that file', async () => {
    const db = await freshDatabase('mig_killed');
    const dir = migrationDir({
      '0001_create_widgets.sql': FILES['0001_create_widgets.sql'],
      '0002_slow.sql': 'CREATE TABLE slow_table (id int);\nSELECT pg_sleep(5);\n',
    });
    const run = runMigrations('tenant', { connectionString: db.url }, dir);
    const settled = run.then(
      () => undefined,
      (err: Error) => err,
    );
    // Wait until the slow file is running, then kill its session as a failing server would.
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const { rows } = await adminQuery(
        `SELECT pid FROM pg_stat_activity WHERE datname = '${db.name}' AND query LIKE '%pg_sleep(5)%' AND pid <> pg_backend_pid()`,
      );
      if (rows.length) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    await adminQuery(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db.name}' AND pid <> pg_backend_pid()`,
    );

    const error = await settled;
    expect(error).toBeInstanceOf(MigrationError);
    expect((error as Error).message).toMatch(/slow/);
    // Give a stray 'error' event time to surface (it would fail this test as an uncaught exception).
    await new Promise((r) => setTimeout(r, 200));
    expect(await tables(db)).toEqual(['migrations', 'widgets']);
    expect((await appliedRows(db)).map((r) => r.id)).toEqual([0, 1]);
  });

  test('refuses a directory whose file numbers have a gap, naming the file', async () => {
    const db = await freshDatabase('mig_gap');
    const dir = migrationDir({ '0001_a.sql': 'SELECT 1;', '0003_c.sql': 'SELECT 1;' });
    await expect(runMigrations('tenant', { connectionString: db.url }, dir)).rejects.toThrow(/0003_c\.sql/);
  });

  test('fails quickly, without hanging, when the database does not answer', async () => {
    await expect(
      runMigrations('tenant', { host: '127.0.0.1', port: 1, user: 'postgres', database: 'postgres' }),
    ).rejects.toThrow();
  });

  test('the real sql/master applies cleanly, then again as a no-op', async () => {
    const db = await freshDatabase('mig_master');
    const files = readdirSync(migrationsDir('master'))
      .filter((f) => f.endsWith('.sql'))
      .sort();
    expect(files.length).toBeGreaterThan(0);

    const first = await runMigrations('master', { connectionString: db.url });
    expect(first.applied).toEqual(['0_create-migrations-table.sql', ...files]);
    expect(first.schemaVersion).toBe(latestSchemaVersion('master'));
    expect(await tables(db)).toEqual(
      expect.arrayContaining([
        'users',
        'stores',
        'store_members',
        'store_databases',
        'store_hostnames',
        'revoked_tokens',
        'credit_transactions',
        'audit_log',
      ]),
    );
    expect(await query(db, 'SELECT id FROM plans ORDER BY id')).toEqual([
      { id: 'agency' },
      { id: 'free' },
      { id: 'pro' },
    ]);

    expect(await runMigrations('master', { connectionString: db.url })).toEqual({
      applied: [],
      schemaVersion: first.schemaVersion,
    });
  });
});

describe("migrateFromRecord (fleet runs: the files after the master's record, in two round trips)", () => {
  const STORE_LOCK = '7245, 1';
  /** `fn` on a client of its own, ended afterwards. */
  async function withDb<T>(db: TestDatabase, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      return await fn(client);
    } finally {
      await client.end();
    }
  }
  /** Whether another session can take postgres-migrations' lock now. */
  const runnerLockFree = (db: TestDatabase) =>
    withDb(db, async (c) => {
      const { rows } = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(-8525285245963000605) AS ok');
      return rows[0].ok;
    });
  const firstOnly = () => migrationDir({ '0001_create_widgets.sql': FILES['0001_create_widgets.sql'] });

  test('applies the files after the record, each with the row postgres-migrations would write', async () => {
    const db = await freshDatabase('mig_record');
    const reference = await freshDatabase('mig_record_ref');
    await runMigrations('tenant', { connectionString: db.url }, firstOnly());
    const dir = migrationDir(FILES);
    await runMigrations('tenant', { connectionString: reference.url }, dir);

    const result = await withDb(db, (c) => migrateFromRecord(c, dir, 1, STORE_LOCK));
    expect(result).toEqual({ applied: ['0002_seed_widgets.sql', '0003_create_gadgets.sql'], schemaVersion: 3 });
    const rows = (r: { id: number; name: string; hash: string }[]) =>
      r.map(({ id, name, hash }) => ({ id, name, hash }));
    expect(rows(await appliedRows(db))).toEqual(rows(await appliedRows(reference)));
    expect(await tables(db)).toEqual(['gadgets', 'migrations', 'widgets']);
    expect(await runnerLockFree(db)).toBe(true);
    // Up to date: the same runner then applies nothing.
    expect(await runMigrations('tenant', { connectionString: db.url }, dir)).toEqual({ applied: [], schemaVersion: 3 });
  });

  test('a table that is not as recorded (behind, ahead, another checksum, none) applies nothing and returns null', async () => {
    const db = await freshDatabase('mig_record_differs');
    const dir = migrationDir(FILES);
    // No migrations table at all.
    expect(await withDb(db, (c) => migrateFromRecord(c, dir, 1, STORE_LOCK))).toBeNull();
    await runMigrations('tenant', { connectionString: db.url }, firstOnly());
    // The record says 2 (the database is behind it), or 0 (ahead of it).
    expect(await withDb(db, (c) => migrateFromRecord(c, dir, 2, STORE_LOCK))).toBeNull();
    expect(await withDb(db, (c) => migrateFromRecord(c, dir, 0, STORE_LOCK))).toBeNull();
    // File 1 changed since it was applied.
    const edited = migrationDir({ ...FILES, '0001_create_widgets.sql': 'CREATE TABLE widgets (id int, name text);\n' });
    expect(await withDb(db, (c) => migrateFromRecord(c, edited, 1, STORE_LOCK))).toBeNull();
    expect((await appliedRows(db)).map((r) => r.id)).toEqual([0, 1]);
    expect(await tables(db)).toEqual(['migrations', 'widgets']);
    expect(await runnerLockFree(db)).toBe(true);
  });

  test("a failing file rolls back only itself, is named, and the runner's lock is given back", async () => {
    const db = await freshDatabase('mig_record_fail');
    await runMigrations('tenant', { connectionString: db.url }, firstOnly());
    const dir = migrationDir({
      '0001_create_widgets.sql': FILES['0001_create_widgets.sql'],
      '0002_seed_widgets.sql': FILES['0002_seed_widgets.sql'],
      '0003_broken.sql': 'CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n',
      '0004_create_gadgets.sql': FILES['0003_create_gadgets.sql'],
    });
    const run = withDb(db, (c) => migrateFromRecord(c, dir, 1, STORE_LOCK));
    await expect(run).rejects.toBeInstanceOf(MigrationError);
    await expect(run).rejects.toThrow(/broken.*division by zero/s);
    expect((await appliedRows(db)).map((r) => r.id)).toEqual([0, 1, 2]);
    expect(await tables(db)).toEqual(['migrations', 'widgets']);
    expect(await runnerLockFree(db)).toBe(true);
  });
});
