import pg from 'pg';
import { latestSchemaVersion, migrateWith, runMigrations } from '../db/migrate';
import { withClient } from '../db/pg-client';
import type { AppContext } from '../app-context';
import type { TenantConnection } from '../db/tenant-handle';
import { pgPassword, pgSsl } from '../db/tenant-pg-options';
import { handOverSql, ident } from '../db/tenant-server-admin';
import { guardedStream, mustBePublic } from '../lib/network-guard';

/** How a store database in this mode may be reached (see mustBePublic). */
export const externalAccess = (ctx: AppContext, mode: string = 'external') => ({
  publicOnly: mustBePublic(mode, ctx.config.tenant),
});

/** `publicOnly`: an owner's external database, which may then be reached on public addresses only. */
export function tenantPgConfig(c: TenantConnection, { publicOnly }: { publicOnly: boolean }): pg.ClientConfig {
  return {
    host: c.host,
    port: c.port,
    database: c.database,
    user: c.user,
    password: pgPassword(c.password),
    ssl: pgSsl(c.ssl),
    connectionTimeoutMillis: 5000,
    ...guardedStream(publicOnly),
  };
}

export interface StoreSeed {
  store: { id: string; name: string; slug: string };
  owner?: { platformUserId: string; email: string; name: string; passwordHash: string };
}

/**
 * Bring a store's database to the newest tenant schema and write its store row and first admin, over one
 * connection. With `asRole` (managed databases, reached as the server's admin) the work runs as the store's
 * role after handing it whatever another role owns there — so the store's role owns everything in its
 * database. Idempotent.
 */
export async function prepareTenant(
  config: pg.ClientConfig | string,
  seed: StoreSeed,
  /** `prepared`: a warm-pool database, already owned through and through by `asRole`. */
  opts: { asRole?: string; prepared?: boolean } = {},
): Promise<{ applied: string[]; schemaVersion: number }> {
  return withClient(config, async (client) => {
    if (opts.asRole && opts.prepared) {
      // Copied from the template of the current schema digest: checking its version is enough.
      const [, version] = (await client.query(
        `SET ROLE ${ident(opts.asRole)}; SELECT coalesce(max(id), 0)::int AS v FROM migrations`,
      )) as unknown as pg.QueryResult<{ v: number }>[];
      if (version.rows[0].v === latestSchemaVersion('tenant')) {
        await seedWith(client, seed);
        return { applied: [], schemaVersion: version.rows[0].v };
      }
    } else if (opts.asRole) {
      await client.query(handOverSql(opts.asRole));
      await client.query(`SET ROLE ${ident(opts.asRole)}`);
    }
    const result = await migrateWith('tenant', client);
    await seedWith(client, seed);
    return result;
  });
}

/** Bring a tenant database to the newest tenant schema (the same runner as the master's). */
export function migrateTenant(connection: TenantConnection, opts = { publicOnly: false }) {
  return runMigrations('tenant', tenantPgConfig(connection, opts));
}

/** Write the store's own row and its first admin (the owner) into its database. Idempotent. */
export async function seedTenant(
  connection: TenantConnection,
  store: StoreSeed['store'],
  owner?: StoreSeed['owner'],
): Promise<void> {
  await withClient(tenantPgConfig(connection, { publicOnly: false }), (client) => seedWith(client, { store, owner }));
}

/** One statement, so one round trip and atomic: the store row, then its first admin when there is an owner. */
async function seedWith(client: pg.ClientBase, { store, owner }: StoreSeed): Promise<void> {
  await client.query(
    `WITH store AS (
       INSERT INTO stores (id, name, slug) VALUES ($1, $2, $3)
       ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, slug = EXCLUDED.slug, updated_at = now()
       RETURNING id
     )
     INSERT INTO users (email, password_hash, name, role, platform_user_id)
     SELECT $4, $5, $6, 'admin', $7 FROM store WHERE $4::text IS NOT NULL
     ON CONFLICT DO NOTHING`,
    [
      store.id,
      store.name,
      store.slug,
      owner?.email ?? null,
      owner?.passwordHash ?? null,
      owner?.name ?? null,
      owner?.platformUserId ?? null,
    ],
  );
}
