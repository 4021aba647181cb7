import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';

/** A Postgres server where managed tenant databases are created, known by `host:port`. */
export interface TenantServer {
  key: string;
  adminUrl: string;
  host: string;
  port: number;
}

/** A server's key, `host:port`, from its connection URL. */
export function serverKeyOfUrl(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${Number(u.port || 5432)}`;
}

function toServer(adminUrl: string): TenantServer {
  const u = new URL(adminUrl);
  return { key: serverKeyOfUrl(adminUrl), adminUrl, host: u.hostname, port: Number(u.port || 5432) };
}

/** TENANT_SERVERS, or the master's own server (its `postgres` database as the admin entry). */
export function tenantServers(ctx: Pick<AppContext, 'config' | 'masterUrl'>): TenantServer[] {
  if (ctx.config.tenantServers.length) return ctx.config.tenantServers.map(toServer);
  const u = new URL(ctx.masterUrl);
  u.pathname = '/postgres';
  return [toServer(u.toString())];
}

export function serverByKey(ctx: AppContext, key: string): TenantServer {
  const server = tenantServers(ctx).find((s) => s.key === key);
  if (!server) throw new Error(`tenant server ${key} is not in TENANT_SERVERS any more`);
  return server;
}

/** The server holding the fewest managed store databases. */
export async function leastLoadedServer(ctx: AppContext): Promise<TenantServer> {
  const servers = tenantServers(ctx);
  if (servers.length === 1) return servers[0];
  const rows = await ctx.master.sequelize.query<{ server: string; n: number }>(
    `SELECT server, count(*)::int AS n FROM store_databases WHERE mode = 'managed' AND server = ANY($1::text[]) GROUP BY server`,
    { bind: [servers.map((s) => s.key)], type: QueryTypes.SELECT },
  );
  const load = new Map(rows.map((r) => [r.server, r.n]));
  return servers.reduce((best, s) => ((load.get(s.key) ?? 0) < (load.get(best.key) ?? 0) ? s : best));
}
