import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { migrate } from 'postgres-migrations';
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
