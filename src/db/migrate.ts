import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { loadMigrationFiles, migrate } from 'postgres-migrations';
import { withClient } from './pg-client';

/**
 * The one migration runner for the master and every tenant database: `postgres-migrations` applies the
 * numbered files of sql/<kind> in order, each in its own transaction, under an advisory lock, and records
 * each with a checksum in the database's `migrations` table; an applied file that changed stops the run.
 */
export type SchemaKind = 'master' | 'tenant';

export const migrationsDir = (kind: SchemaKind) => path.resolve(__dirname, '../../sql', kind);

export class MigrationError extends Error {}

/**
 * Read once per process: the schema files ship with the code, so they change only with a new deployment
 * (and provisioning asks for these on every job).
 */
const described = new Map<string, { digest: string; version: number }>();

function describe(kind: SchemaKind, dir = migrationsDir(kind)): { digest: string; version: number } {
  let d = described.get(dir);
  if (!d) {
    const files = migrationFiles(dir);
    const hash = createHash('sha1');
    for (const f of files) hash.update(f.fileName).update(readFileSync(path.join(dir, f.fileName)));
    d = { digest: hash.digest('hex').slice(0, 12), version: Math.max(0, ...files.map((f) => f.version)) };
    described.set(dir, d);
  }
  return d;
}

/** The numbered files of a migrations directory, in order. */
export function migrationFiles(dir: string): { version: number; fileName: string }[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((fileName) => ({ version: parseInt(fileName, 10), fileName }));
}

/** A digest of a schema's files: templates are rebuilt when it changes. */
export const schemaDigest = (kind: SchemaKind): string => describe(kind).digest;

/** The schema version the files on disk describe: the highest file number (of `dir`, default sql/<kind>). */
export const latestSchemaVersion = (kind: SchemaKind, dir?: string): number => describe(kind, dir).version;

export async function runMigrations(
  kind: SchemaKind,
  connection: pg.ClientConfig,
  dir: string = migrationsDir(kind),
  options: { role?: string } = {},
): Promise<{ applied: string[]; schemaVersion: number }> {
  return withClient({ connectionTimeoutMillis: 5000, ...connection }, async (client) => {
    // Objects are owned by the role the statements run as (a template owner, say), not the login role.
    if (options.role) await client.query(`SET ROLE "${options.role.replace(/"/g, '""')}"`);
    return migrateWith(kind, client, dir);
  });
}

/** The same, on a connection the caller holds (and keeps). */
export async function migrateWith(
  kind: SchemaKind,
  client: pg.Client,
  dir: string = migrationsDir(kind),
): Promise<{ applied: string[]; schemaVersion: number }> {
  const done = await migrate({ client }, dir).catch((err: Error) => {
    throw new MigrationError(`${kind} migrations in ${dir}: ${err.message}`);
  });
  const { rows } = await client.query<{ v: number }>('SELECT coalesce(max(id), 0)::int AS v FROM migrations');
  return { applied: done.map((m) => m.fileName), schemaVersion: rows[0].v };
}

/** A migration file as postgres-migrations reads it: its id, name and the checksum it records. */
interface MigrationFile {
  id: number;
  name: string;
  fileName: string;
  hash: string;
  sql: string;
}

/** Read once per process and directory, like `described`: the files ship with the code. */
const plans = new Map<string, Promise<MigrationFile[]>>();

/** The files of `dir` as postgres-migrations reads them (its own loader: the same ids, names, checksums and its table's file 0). */
function migrationPlan(dir: string): Promise<MigrationFile[]> {
  let plan = plans.get(dir);
  if (!plan) {
    plan = loadMigrationFiles(dir);
    plans.set(dir, plan);
    plan.catch(() => plans.delete(dir));
  }
  return plan;
}

/** postgres-migrations' own advisory lock: taken here too, so a runner of either kind never interleaves with the other. */
const RUNNER_LOCK = '-8525285245963000605';

const literal = (s: string) => `'${s.replace(/'/g, "''")}'`;

/**
 * The files after `recorded`, applied in two round trips — the same work as postgres-migrations (each file in
 * its own transaction with its row in `migrations`, under its lock), provided the database's migrations table
 * holds exactly the files up to `recorded` with these checksums. The table is read under the lock, which is
 * held until the files are applied, so nothing can change in between. `lock` is taken first in the same round
 * trip (a caller's session lock, kept). Returns null, with nothing applied and the runner's lock given back,
 * when the table differs from the record (or is missing) or a file asks for no transaction: the caller then
 * runs `migrateWith`, which reads and validates the table itself.
 */
export async function migrateFromRecord(
  client: pg.Client,
  dir: string,
  recorded: number,
  lock: string,
): Promise<{ applied: string[]; schemaVersion: number } | null> {
  const files = await migrationPlan(dir).catch((err: Error) => {
    throw new MigrationError(`tenant migrations in ${dir}: ${err.message}`);
  });
  const pending = files.filter((f) => f.id > recorded);
  if (pending.some((f) => f.sql.includes('-- postgres-migrations disable-transaction'))) return null;
  let table: { id: number; hash: string }[];
  try {
    const read = (await client.query(
      `SELECT pg_advisory_lock(${lock}), pg_advisory_lock(${RUNNER_LOCK}); SELECT id, hash FROM migrations ORDER BY id`,
    )) as unknown as pg.QueryResult<{ id: number; hash: string }>[];
    table = read[1].rows;
  } catch (err) {
    // No migrations table: not what any record > 0 says (the session locks outlive the failed statement).
    if ((err as { code?: string }).code !== '42P01') throw err;
    table = [];
  }
  const asRecorded =
    table.length === recorded + 1 && table.every((row, i) => row.id === files[i]?.id && row.hash === files[i].hash);
  if (!asRecorded || !pending.length) {
    await client.query(`SELECT pg_advisory_unlock(${RUNNER_LOCK})`);
    return null;
  }
  // A file's last line may be a comment: the statements after it start on a line of their own.
  const transactions = pending.map(
    (f) =>
      `START TRANSACTION;\n${f.sql}\n;\nINSERT INTO migrations (id, name, hash) VALUES (${f.id}, ${literal(f.name)}, ${literal(f.hash)});\nCOMMIT;`,
  );
  try {
    const results = (await client.query(
      `${transactions.join('\n')}\nSELECT pg_advisory_unlock(${RUNNER_LOCK});\nSELECT coalesce(max(id), 0)::int AS v FROM migrations`,
    )) as unknown as pg.QueryResult<{ v: number }>[];
    return { applied: pending.map((f) => f.fileName), schemaVersion: results[results.length - 1].rows[0].v };
  } catch (err) {
    // The failed file's transaction is open and aborted: end it, give the runner's lock back.
    const { rows } = await client
      .query(
        `ROLLBACK; SELECT pg_advisory_unlock(${RUNNER_LOCK}); SELECT coalesce(max(id), 0)::int AS v FROM migrations`,
      )
      .then((r) => (r as unknown as pg.QueryResult<{ v: number }>[])[2])
      .catch(() => {
        throw err;
      });
    const failed = pending.find((f) => f.id > rows[0].v);
    throw new MigrationError(
      `tenant migrations in ${dir}: Migration failed. Reason: An error occurred running '${failed?.name}'. Rolled back this migration. No further migrations were run. Reason: ${(err as Error).message}`,
    );
  }
}
