import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { logger } from '../lib/logger';
import { runMigrations, schemaDigest } from '../db/migrate';
import { ident, withClient } from './tenant-db';
import type { TenantServer } from './tenant-servers';

/** Owns every object in a template; a new store database reassigns them to the store's own role. */
export const TEMPLATE_OWNER = 'tenantry_template_owner';
const TEMPLATE_PREFIX = 'tenantry_tpl_';
const LOCK_KEY = 748_213_901;

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
      const old = await client.query(`SELECT datname FROM pg_database WHERE datname LIKE '${TEMPLATE_PREFIX}%' AND datname <> $1 AND datname NOT LIKE '%_building'`, [name]);
      for (const { datname } of old.rows) await client.query(`DROP DATABASE IF EXISTS ${ident(datname)}`).catch(() => {});
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_KEY]);
    }
  });
  return name;
}

/** Warm databases are named `<TENANT_DB_PREFIX>pool_<schema digest>_<random>`. */
const poolPrefix = (dbPrefix: string) => `${dbPrefix}pool_${schemaDigest('tenant')}_`;

/**
 * Top up the warm pool of `server`: empty store databases already copied from the current template, so
 * that a new store takes one by renaming it (milliseconds) instead of copying (a CREATE DATABASE).
 * Databases of an older schema are dropped.
 */
export async function refillWarmPool(server: TenantServer, target: number, dbPrefix: string): Promise<{ created: number; dropped: number }> {
  const template = await ensureTemplate(server);
  const prefix = poolPrefix(dbPrefix);
  return withClient(server.adminUrl, async (client) => {
    const { rows } = await client.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE starts_with(datname, $1)`, [`${dbPrefix}pool_`]);
    let dropped = 0;
    for (const { datname } of rows.filter((r) => !r.datname.startsWith(prefix))) {
      await client.query(`DROP DATABASE IF EXISTS ${ident(datname)}`).then(() => dropped++, () => {});
    }
    let have = rows.filter((r) => r.datname.startsWith(prefix)).length;
    let created = 0;
    while (have < target) {
      const name = `${prefix}${randomBytes(6).toString('hex')}`;
      await client.query(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(template)} OWNER ${ident(TEMPLATE_OWNER)}`);
      await client.query(`REVOKE ALL ON DATABASE ${ident(name)} FROM PUBLIC`);
      have++;
      created++;
    }
    return { created, dropped };
  });
}

/**
 * Take a warm database for a new store: renaming is atomic, so of two jobs racing for one database only
 * one gets it (the other tries the next). Returns false when the pool is empty.
 */
export async function claimWarmDatabase(admin: pg.Client, database: string, dbPrefix: string): Promise<boolean> {
  const prefix = poolPrefix(dbPrefix);
  const { rows } = await admin.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY random()`, [prefix]);
  for (const { datname } of rows) {
    try {
      await admin.query(`ALTER DATABASE ${ident(datname)} RENAME TO ${ident(database)}`);
      return true;
    } catch {
      // taken by another job a moment ago
    }
  }
  return false;
}
