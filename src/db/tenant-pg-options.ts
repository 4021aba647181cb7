import type { ConnectionOptions } from 'node:tls';
import type { TenantConnection } from './tenant-types';

/**
 * The pg options that decide how a tenant connection authenticates, shared by the Sequelize handles and the
 * provisioning clients. pg fills every option left empty from the server's side — PGSSLMODE, PGPASSWORD, the
 * ~/.pgpass of the process's user — and an owner's database must get only what the owner gave.
 */

/** `ssl` as pg wants it, always explicit, and nothing but whether to verify the server. */
export function pgSsl(ssl: TenantConnection['ssl']): false | ConnectionOptions {
  if (!ssl) return false;
  return { rejectUnauthorized: !(typeof ssl === 'object' && ssl.rejectUnauthorized === false) };
}

/**
 * `password` as pg wants it: a function, because an empty string counts as "none" (to Sequelize and to pg)
 * and would be replaced by PGPASSWORD or a password read from ~/.pgpass.
 */
export const pgPassword =
  (password: string): (() => string) =>
  () =>
    password;
