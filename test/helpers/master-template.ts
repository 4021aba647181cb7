import pg from 'pg';
import { runMigrations, schemaDigest } from '../../src/db/migrate';
import { withClient } from '../../src/db/pg-client';
import { createTestDatabase, TEST_SERVER_URL, urlFor, type TestDatabase } from './db';

/**
 * A suite's master database is copied (`CREATE DATABASE … TEMPLATE`) from a database migrated once to the
 * current master schema, instead of being migrated from scratch by every suite. The copy includes the
 * `migrations` table, so createContext's runMigrations finds everything applied and does nothing.
 *
 * The template is named by a digest of sql/master, so a schema change makes a new one. It is built under
 * another name, closed to connections (Postgres copies no database that someone is connected to) and then
 * renamed, so a half-built template is never copied. Several jest runs may share a server: building takes
 * an advisory lock, and a suite that finds no template (another schema's run dropped it, an interrupted run
 * never finished it) builds it and copies again.
 */

/**
 * Not `tenantry_test_…`, which createTestDatabase gives suites (one labelled "master_tpl" is no template),
 * nor the tenant templates' `tenantry_tpl_…`.
 */
const TEMPLATE_PREFIX = 'tenantry_master_test_tpl_';
/** What this file names its templates, and nothing else: what it may drop. */
const TEMPLATE_NAME = `^${TEMPLATE_PREFIX}[0-9a-f]{12}$`;
const BUILDING_NAME = `^${TEMPLATE_PREFIX}[0-9a-f]{12}_building$`;
/** Not the tenant templates' key (src/provisioning/templates.ts): those are built on the same server. */
const LOCK_KEY = 748_213_902;
/** A template of another schema is dropped once it is this old: a run started before the change may still copy it. */
const KEEP_OTHER_SCHEMA_MS = 15 * 60_000;
/** Postgres ends a closed connection's backend a moment after the client has gone. */
const WAIT_FOR_BACKENDS_MS = 10_000;

const UNDEFINED_DATABASE = '3D000';
const OBJECT_IN_USE = '55006';

const codeOf = (err: unknown) => (err as { code?: string }).code;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export const masterTemplateName = (): string => `${TEMPLATE_PREFIX}${schemaDigest('master')}`;

/** A uniquely named master database for one suite, at the latest schema; dropped by drop(). */
export async function createMasterTestDatabase(label: string, server = TEST_SERVER_URL): Promise<TestDatabase> {
  const template = masterTemplateName();
  try {
    return await createTestDatabase(label, server, { template });
  } catch (err) {
    if (codeOf(err) !== UNDEFINED_DATABASE) throw err;
    await ensureMasterTemplate(server);
    return createTestDatabase(label, server, { template });
  }
}

/** Builds the current master template on `server` unless it is there; returns its name. */
export async function ensureMasterTemplate(server = TEST_SERVER_URL): Promise<string> {
  const name = masterTemplateName();
  await withClient(server, async (client) => {
    // Session-level: released by the server if this process dies while building.
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
    try {
      const exists = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
      if (!exists.rowCount) await build(client, name, server);
      await dropOtherSchemas(client, name);
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]);
    }
  });
  return name;
}

async function build(client: pg.Client, name: string, server: string): Promise<void> {
  // Whatever an interrupted build left: under the lock, nobody is building it now.
  const { rows: left } = await client.query<{ datname: string }>('SELECT datname FROM pg_database WHERE datname ~ $1', [
    BUILDING_NAME,
  ]);
  for (const { datname } of left) await client.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`);
  const building = `${name}_building`;
  await client.query(`CREATE DATABASE ${building}`);
  await runMigrations('master', { connectionString: urlFor(building, server) });
  await client.query(`COMMENT ON DATABASE ${building} IS '${new Date().toISOString()}'`);
  await client.query(`ALTER DATABASE ${building} WITH ALLOW_CONNECTIONS false`);
  for (const started = Date.now(); ; await sleep(50)) {
    try {
      await client.query(`ALTER DATABASE ${building} RENAME TO ${name}`);
      return;
    } catch (err) {
      // The migration's backend is still on its way out.
      if (codeOf(err) !== OBJECT_IN_USE || Date.now() - started > WAIT_FOR_BACKENDS_MS) throw err;
    }
  }
}

/** Templates of other schemas no run has built for a while: nothing is likely to copy them again. */
async function dropOtherSchemas(client: pg.Client, current: string): Promise<void> {
  const { rows } = await client.query<{ datname: string; built: string | null }>(
    "SELECT datname, shobj_description(oid, 'pg_database') AS built FROM pg_database WHERE datname ~ $1 AND datname <> $2",
    [TEMPLATE_NAME, current],
  );
  for (const { datname, built } of rows) {
    const age = Date.now() - Date.parse(built ?? '');
    // A copy in progress holds the template: the drop waits for it. A run still copying it later builds it again.
    if (!(age < KEEP_OTHER_SCHEMA_MS)) await client.query(`DROP DATABASE IF EXISTS ${datname}`).catch(() => {});
  }
}

/** Jest's globalSetup: the template is built once, before any suite (in any worker) needs it. */
export default async function buildMasterTemplate(): Promise<void> {
  await ensureMasterTemplate();
}
