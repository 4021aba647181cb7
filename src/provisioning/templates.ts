import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { logger } from '../lib/logger';
import { runMigrations, schemaDigest } from '../db/migrate';
import { withClient } from '../db/pg-client';
import { databaseOfRoleSql, handOverSql, ident, loginRoleSql } from '../db/tenant-server-admin';
import type { TenantServer } from '../db/tenant-servers';

/** Owns every object in a template; a new store database reassigns them to the store's own role. */
export const TEMPLATE_OWNER = 'tenantry_template_owner';
export const TEMPLATE_PREFIX = 'tenantry_tpl_';
/** Held while a template is built (reconcile.ts takes it to drop an interrupted build). */
export const LOCK_KEY = 748_213_901;

const ready = new Map<string, Promise<string>>();

/**
 * The name of a database on `server` holding the current tenant schema, built once per schema digest:
 * `CREATE DATABASE … TEMPLATE` copies it in one step instead of running every migration. It is built
 * under another name and renamed when complete, so a half-built template is never used.
 */
export function ensureTemplate(server: TenantServer): Promise<string> {
  const name = `${TEMPLATE_PREFIX}${schemaDigest('tenant')}`;
  const key = `${server.key}/${name}`;
  let p = ready.get(key);
  if (!p) {
    p = buildTemplate(server, name).catch((err) => {
      ready.delete(key);
      throw err;
    });
    ready.set(key, p);
  }
  return p;
}

async function buildTemplate(server: TenantServer, name: string): Promise<string> {
  await withClient(server.adminUrl, async (client) => {
    // One builder per server at a time (workers on other machines too).
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_KEY]);
    try {
      const exists = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
      if (exists.rowCount) return;
      const building = `${name}_building`;
      await client.query(`DROP DATABASE IF EXISTS ${ident(building)}`);
      const role = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [TEMPLATE_OWNER]);
      if (!role.rowCount) await client.query(`CREATE ROLE ${ident(TEMPLATE_OWNER)} NOLOGIN`);
      await client.query(`CREATE DATABASE ${ident(building)} OWNER ${ident(TEMPLATE_OWNER)}`);
      await client.query(`REVOKE ALL ON DATABASE ${ident(building)} FROM PUBLIC`);
      const u = new URL(server.adminUrl);
      u.pathname = `/${building}`;
      await runMigrations('tenant', { connectionString: u.toString() }, undefined, { role: TEMPLATE_OWNER });
      await client.query(`ALTER DATABASE ${ident(building)} RENAME TO ${ident(name)}`);
      logger.info({ server: server.key, template: name }, 'tenant template built');
      // Older templates describe an older schema: nothing will copy them again.
      const old = await client.query(
        `SELECT datname FROM pg_database WHERE datname LIKE '${TEMPLATE_PREFIX}%' AND datname <> $1 AND datname NOT LIKE '%_building'`,
        [name],
      );
      for (const { datname } of old.rows)
        await client.query(`DROP DATABASE IF EXISTS ${ident(datname)}`).catch(() => {});
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]);
    }
  });
  return name;
}

/**
 * A warm database is `<TENANT_DB_PREFIX>pool_<schema digest>_<random>`, owned with everything in it by a
 * NOLOGIN role of the same name; it is prepared under a `…prep_…` name and renamed when complete, so a
 * half-prepared one is never claimed.
 */
export const warmName = (dbPrefix: string, stage: 'pool' | 'prep', id = '') =>
  `${dbPrefix}${stage}_${schemaDigest('tenant')}_${id}`;
export const REFILL_LOCK_KEY = 748_213_902;

/**
 * Top up the warm pool of `server` to `target` databases, each a copy of the current template already
 * handed to its own role, with CONNECT granted to that role only: claiming one is two renames and a
 * password. Leftovers are dropped first: databases of an older schema, unfinished preparations, and roles
 * whose database is gone. One refill per server at a time (another worker's is simply left to finish).
 */
export async function refillWarmPool(
  server: TenantServer,
  target: number,
  dbPrefix: string,
): Promise<{ created: number; dropped: number }> {
  const template = await ensureTemplate(server);
  return withClient(server.adminUrl, async (client) => {
    const {
      rows: [lock],
    } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [REFILL_LOCK_KEY]);
    if (!lock.ok) return { created: 0, dropped: 0 };
    try {
      const { rows } = await client.query<{ datname: string; ready: boolean }>(
        `SELECT datname, starts_with(datname, $2) AND pg_get_userbyid(datdba) = datname AS ready
           FROM pg_database WHERE starts_with(datname, $1 || 'pool_') OR starts_with(datname, $1 || 'prep_')`,
        [dbPrefix, warmName(dbPrefix, 'pool')],
      );
      let dropped = 0;
      for (const { datname } of rows.filter((r) => !r.ready)) {
        await client.query(`DROP DATABASE IF EXISTS ${ident(datname)} WITH (FORCE)`).then(
          () => dropped++,
          () => {},
        );
      }
      const orphans = await client.query<{ rolname: string }>(
        `SELECT rolname FROM pg_roles r WHERE starts_with(rolname, $1 || 'pool_') AND NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = r.rolname)`,
        [dbPrefix],
      );
      for (const { rolname } of orphans.rows)
        await client.query(`DROP ROLE IF EXISTS ${ident(rolname)}`).catch(() => {});
      let have = rows.filter((r) => r.ready).length;
      let created = 0;
      for (; have < target; have++, created++) await prepareWarmDatabase(server, client, template, dbPrefix);
      return { created, dropped };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [REFILL_LOCK_KEY]);
    }
  });
}

async function prepareWarmDatabase(
  server: TenantServer,
  client: pg.Client,
  template: string,
  dbPrefix: string,
): Promise<void> {
  const id = randomBytes(6).toString('hex');
  const [name, preparing] = [warmName(dbPrefix, 'pool', id), warmName(dbPrefix, 'prep', id)];
  await client.query(`CREATE ROLE ${ident(name)} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE`);
  await client.query(`CREATE DATABASE ${ident(preparing)} TEMPLATE ${ident(template)} OWNER ${ident(name)}`);
  await client.query(databaseOfRoleSql(preparing, name));
  const u = new URL(server.adminUrl);
  u.pathname = `/${preparing}`;
  // Also the database's first connection, which builds its relation cache file ahead of the store's.
  await withClient(u.toString(), (c) => c.query(handOverSql(name)));
  await client.query(`ALTER DATABASE ${ident(preparing)} RENAME TO ${ident(name)}`);
}

/**
 * Take a warm database for a new store: in one transaction it and its role are renamed to the store's
 * names and the role gets its login and password, so of two jobs racing for one only one gets it (the
 * other tries the next), and a crash leaves either a warm database or a finished one. Returns false when
 * the pool is empty.
 */
export async function claimWarmDatabase(
  admin: pg.ClientBase,
  target: { database: string; role: string; password: string },
  dbPrefix: string,
): Promise<boolean> {
  const { rows } = await admin.query<{ datname: string }>(
    `SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND pg_get_userbyid(datdba) = datname ORDER BY random()`,
    [warmName(dbPrefix, 'pool')],
  );
  for (const { datname } of rows) {
    try {
      // One query string of several statements runs as one implicit transaction (and one round trip).
      await admin.query(
        `ALTER DATABASE ${ident(datname)} RENAME TO ${ident(target.database)};
         ALTER ROLE ${ident(datname)} RENAME TO ${ident(target.role)};
         ${loginRoleSql('ALTER', target.role, target.password)}`,
      );
      return true;
    } catch {
      // taken by another job a moment ago
    }
  }
  return false;
}
