import type { Writable } from 'node:stream';
import pg from 'pg';
import type { AppContext } from '../app-context';
import { auditEvent } from '../db/audit';
import { BudgetTimeoutError } from '../db/connection-budget';
import { withClient } from '../db/pg-client';
import type { BudgetHolder, TenantConnection } from '../db/tenant-types';
import { secretContext } from '../lib/crypto';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { externalAccess, tenantPgConfig } from '../provisioning/tenant-db';
import { requireStoreAccess } from '../stores/membership';
import { writeStoreArchive, type ExportManifest } from './store-archive';

/**
 * The store's owner takes its data away (GDPR portability; an owner leaving the platform): see
 * store-archive.ts for the archive. Who and when, decided with API.md and src/stores/lifecycle.ts:
 * - the owner only (a platform token; admins and staff of the store → 403, strangers → 403 as for every
 *   store route, a deleted store → 404 like any route of a deleted store: restore it first);
 * - a suspended store may be exported: suspension stops changes, not the owner reading the store's data;
 * - a store without a ready database → 409 STORE_NOT_READY.
 * What one owner can take from the server:
 * - one export per store at a time, on every instance (a session advisory lock in the store's own database,
 *   gone with the session) → 409 CONFLICT;
 * - EXPORTS_PER_OWNER at a time per instance → 429 RATE_LIMITED, EXPORTS_PER_INSTANCE in all → 503
 *   SERVICE_UNAVAILABLE (both with Retry-After);
 * - its database connection is one of the tenant server's budget (the owner's share too): none free in time
 *   → 503 TENANT_UNAVAILABLE, as a store request would be;
 * - the client going away aborts the COPY and closes the connection (the session is terminated, so a
 *   statement waiting on a lock ends too).
 */

export interface ExportLimits {
  perInstance: number;
  perOwner: number;
}

export const DEFAULT_EXPORT_LIMITS: ExportLimits = { perInstance: 4, perOwner: 2 };

/** The advisory lock (two-int form) held by a store's export in that store's database. */
export const EXPORT_LOCK = [7245, 40] as const;

/** How the export's sessions show in pg_stat_activity. */
export const EXPORT_APPLICATION_NAME = 'tenantry-export';

/** The exports running in this process, by owner. */
export class ExportSlots {
  private running = 0;
  private readonly perOwner = new Map<string, number>();

  constructor(readonly limits: ExportLimits = DEFAULT_EXPORT_LIMITS) {}

  /** Take a slot for this owner, or refuse; the returned function gives it back (once). */
  take(ownerId: string): () => void {
    const mine = this.perOwner.get(ownerId) ?? 0;
    if (mine >= this.limits.perOwner)
      throw fail(ErrorCode.RATE_LIMITED, `At most ${this.limits.perOwner} exports of your stores may run at once`, {
        retryAfterSeconds: 10,
      });
    if (this.running >= this.limits.perInstance)
      throw fail(ErrorCode.SERVICE_UNAVAILABLE, 'Too many exports are running; try again shortly', {
        retryAfterSeconds: 10,
      });
    this.running++;
    this.perOwner.set(ownerId, mine + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.running--;
      const left = (this.perOwner.get(ownerId) ?? 1) - 1;
      if (left > 0) this.perOwner.set(ownerId, left);
      else this.perOwner.delete(ownerId);
    };
  }

  get active(): number {
    return this.running;
  }
}

/** An export ready to stream: the checks passed, its connection open and its lock held. */
export interface OpenExport {
  fileName: string;
  /** Write the archive into `out`; abort `abort` when the reader goes away. Closes everything when done. */
  write(out: Writable, abort: AbortController): Promise<ExportManifest>;
  /** Give everything back without writing (also safe after write). */
  close(): Promise<void>;
}

/** A connection's slot in the tenant server's budget, held by the export for the time of its read. */
function budgetHolder(storeId: string, ownerId: string): BudgetHolder {
  return {
    storeId,
    ownerId,
    open: 0,
    giveBack: 0,
    demand: () => Number.MAX_SAFE_INTEGER,
    idleConnections: () => 0,
    closeIdle: () => 0,
  };
}

const fileStamp = (d: Date) =>
  d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');

/**
 * Check that `userId` may export the store now and take what the export needs (a slot, a budgeted
 * connection, the store's export lock). Every refusal is thrown here, before a byte is sent.
 */
export async function openExport(
  ctx: AppContext,
  slots: ExportSlots,
  { storeId, userId, requestId }: { storeId: string; userId: string; requestId: string | null },
): Promise<OpenExport> {
  const { store } = await requireStoreAccess(ctx.master, storeId, userId, ['owner']);
  const db = await ctx.master.models.StoreDatabase.findByPk(storeId);
  if (!db || db.status !== 'ready' || !db.credentials)
    throw fail(ErrorCode.STORE_NOT_READY, 'This store has no ready database yet');

  const cleanups: (() => unknown)[] = [];
  const close = async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  };
  try {
    cleanups.push(slots.take(store.ownerId));

    const connection = ctx.encryptor.decryptJson<TenantConnection>(
      db.credentials,
      secretContext.storeCredentials(storeId),
    );
    const config: pg.ClientConfig = {
      ...tenantPgConfig(connection, externalAccess(ctx, db.mode)),
      application_name: EXPORT_APPLICATION_NAME,
      // Our own process hanging mid-export must not leave a snapshot open on a shared server.
      idle_in_transaction_session_timeout: 60_000,
    };
    const server = ctx.tenants.servers.forServer(connection);
    const holder = budgetHolder(storeId, store.ownerId);
    try {
      await server.budget.acquire(holder);
    } catch (err) {
      if (err instanceof BudgetTimeoutError)
        throw fail(ErrorCode.TENANT_UNAVAILABLE, 'The server is busy; try again shortly', { retryAfterSeconds: 1 });
      throw err;
    }
    cleanups.push(() => server.budget.release(holder));

    const client = new pg.Client(config);
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (err) {
      logger.warn({ storeId, err: (err as Error).message }, 'export: the store database is not reachable');
      throw fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database is not reachable right now", {
        retryAfterSeconds: 5,
      });
    }
    cleanups.push(() => client.end().catch(() => {}));
    const {
      rows: [session],
    } = await client.query<{ locked: boolean; pid: number }>(
      'SELECT pg_try_advisory_lock($1::int, $2::int) AS locked, pg_backend_pid() AS pid',
      [...EXPORT_LOCK],
    );
    if (!session.locked) throw fail(ErrorCode.CONFLICT, 'An export of this store is already running');

    const startedAt = new Date();
    return {
      fileName: `${store.slug.replace(/[^a-z0-9-]/g, '-')}-export-${fileStamp(startedAt)}.tar.gz`,
      close,
      async write(out, abort) {
        // The reader left (or writing failed): cut the session, so a COPY stops at once, even one waiting for
        // a lock (a closed socket alone is noticed only when the server next writes to it).
        const cut = () => {
          (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
          void withClient(config, (killer) => killer.query('SELECT pg_terminate_backend($1)', [session.pid])).catch(
            (err: Error) => logger.warn({ storeId, err: err.message }, 'export: terminating its session failed'),
          );
        };
        abort.signal.addEventListener('abort', cut, { once: true });
        try {
          const manifest = await writeStoreArchive(client, storeId, out, abort);
          await auditEvent(ctx.master, {
            actorUserId: userId,
            storeId,
            action: 'store.exported',
            targetType: 'store',
            targetId: storeId,
            data: {
              schemaVersion: manifest.schemaVersion,
              rows: manifest.tables.reduce((n, t) => n + t.rows, 0),
              ms: Date.now() - startedAt.getTime(),
            },
            requestId,
          }).catch((err: Error) => logger.warn({ storeId, err: err.message }, 'export: the audit row failed'));
          return manifest;
        } finally {
          abort.signal.removeEventListener('abort', cut);
          await close();
        }
      },
    };
  } catch (err) {
    await close();
    throw err;
  }
}
