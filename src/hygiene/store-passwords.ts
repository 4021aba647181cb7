import { randomBytes } from 'node:crypto';
import { QueryTypes } from 'sequelize';
import { audit } from '../db/audit';
import type { MasterDb } from '../db/master';
import { ident } from '../db/tenant-server-admin';
import type { AdminPools } from '../db/tenant-server-admin';
import type { TenantServer } from '../db/tenant-servers';
import type { TenantConnection } from '../db/tenant-types';
import { secretContext, type Encryptor } from '../lib/crypto';
import { Semaphore } from '../lib/semaphore';

/**
 * Store database passwords rotate: each managed store's login role gets a new password, set on its tenant
 * server and stored (encrypted) in the master DB, without a failed request.
 *
 * Postgres keeps one password per role, and nothing spans the master and a tenant server, so the steps are
 * ordered for a crash between any two of them to be finished by the next attempt:
 *   1. the new settings are written to `pending_credentials` (committed): `credentials` still works;
 *   2. in one master transaction: `credentials` := the pending settings (if they are still pending), with
 *      `credentials_rotated_at` and the audit row; then, before it commits, ALTER ROLE … PASSWORD on the tenant
 *      server (idempotent: the same password again). A failing ALTER rolls the master back: still pending;
 *   3. the master transaction commits;
 *   4. the store's handle is dropped on every instance (ConnectionManager.invalidate, over the bus).
 * A store with a pending password is finished with that password, never given another one. A crash between the
 * server's change and the master's commit leaves new connections of the store failing until the next attempt,
 * which the scheduled task makes within a minute (it takes such stores first), as does the command again.
 *
 * Sessions already open are not touched by a password change (Postgres checks a password when a session
 * starts): the old handle's connections finish their queries and close with it (TenantHandle.close waits for
 * its requests), while the new handle connects with the new password. Between the server's change and step 4
 * (a master commit and a bus message: a few ms) an instance opening a *new* connection with its old handle
 * would be refused; under steady load a handle reuses its pooled connections, so that window sees no new
 * connection in practice. Closing it entirely needs the connection manager to retry a refused password once
 * with freshly read credentials.
 *
 * One rotation per store at a time: a transaction-level advisory lock on the master DB, held over the steps
 * (another process finds it taken and skips the store).
 */

export interface PasswordDeps {
  master: MasterDb;
  encryptor: Encryptor;
  adminPools: AdminPools;
  /** The configured tenant servers (tenantServers(ctx)). */
  servers: readonly TenantServer[];
  /** Drop the store's handle on every instance (ConnectionManager.invalidate, or the same bus event). */
  invalidate(storeId: string): Promise<void>;
}

export type RotationOutcome = 'rotated' | 'skipped' | 'failed';

export interface StoreRotation {
  storeId: string;
  outcome: RotationOutcome;
  /** Why it was skipped or failed. */
  reason?: string;
  server?: string | null;
}

/** The advisory lock class of password rotations (the store id's hash is the other half). */
const LOCK_CLASS = 0x70617373; // 'pass'

interface StoreRow {
  storeId: string;
  mode: 'managed' | 'external';
  server: string | null;
  status: string;
  credentials: string;
  pending: string | null;
}

/** What step 1 leaves: a reason to leave the store alone, or the settings to set on its server. */
type Staged =
  { skip: string; server?: string | null } | { row: StoreRow; server: TenantServer; connection: TenantConnection };

const newPassword = () => randomBytes(24).toString('base64url');

/** Rotate one store's database password (see the module comment). Never throws for a store's own failure. */
export async function rotateStorePassword(deps: PasswordDeps, storeId: string, actor: string): Promise<StoreRotation> {
  const { master } = deps;
  const context = secretContext.storeCredentials(storeId);
  try {
    return await master.sequelize.transaction(async (lockTx) => {
      const [{ locked }] = await master.sequelize.query<{ locked: boolean }>(
        'SELECT pg_try_advisory_xact_lock($1::int, hashtext($2)) AS locked',
        { bind: [LOCK_CLASS, storeId], type: QueryTypes.SELECT, transaction: lockTx },
      );
      if (!locked) return { storeId, outcome: 'skipped', reason: 'being rotated by another process' } as const;

      // 1. The new settings, pending (or the ones an earlier attempt left pending).
      const staged = await master.sequelize.transaction(async (t): Promise<Staged> => {
        const [row] = await master.sequelize.query<StoreRow>(
          `SELECT store_id AS "storeId", mode, server, status, credentials, pending_credentials AS pending
             FROM store_databases WHERE store_id = $1 FOR UPDATE`,
          { bind: [storeId], type: QueryTypes.SELECT, transaction: t },
        );
        if (!row) return { skip: 'no database' };
        if (row.mode !== 'managed') return { skip: 'external database (not ours to change)', server: row.server };
        if (row.status !== 'ready' && !row.pending) return { skip: `database ${row.status}`, server: row.server };
        const server = deps.servers.find((s) => s.key === row.server);
        // Checked before anything is staged: nothing changes for a store this process cannot reach.
        if (!server) throw new Error(`tenant server ${row.server} is not in TENANT_SERVERS`);
        if (row.pending)
          return {
            row,
            server,
            connection: deps.encryptor.decryptJson<TenantConnection>(row.pending, context),
          };
        const current = deps.encryptor.decryptJson<TenantConnection>(row.credentials, context);
        const connection = { ...current, password: newPassword() };
        const pending = deps.encryptor.encryptJson(connection, context);
        await master.sequelize.query('UPDATE store_databases SET pending_credentials = $1 WHERE store_id = $2', {
          bind: [pending, storeId],
          transaction: t,
        });
        return { row, server, connection };
      });
      if ('skip' in staged) return { storeId, outcome: 'skipped', reason: staged.skip, server: staged.server ?? null };
      const { row, server, connection } = staged;

      // 2 and 3. The master's change is made first and committed right after the server's, so that the two
      // differ for as short a time as can be: the instances' cached handles use the old password until step 4.
      // Should the server's change fail, nothing changes in the master and the password stays pending.
      const committed = await master.sequelize.transaction(async (t) => {
        const [now] = await master.sequelize.query<{ pending: string | null }>(
          'SELECT pending_credentials AS pending FROM store_databases WHERE store_id = $1 FOR UPDATE',
          { bind: [storeId], type: QueryTypes.SELECT, transaction: t },
        );
        // Compared by plaintext: a key rotation may have encrypted the pending settings again meanwhile.
        if (
          !now?.pending ||
          deps.encryptor.decryptJson<TenantConnection>(now.pending, context).password !== connection.password
        )
          return false;
        await master.sequelize.query(
          `UPDATE store_databases
              SET credentials = pending_credentials, pending_credentials = NULL,
                  credentials_rotated_at = now(), updated_at = now()
            WHERE store_id = $1`,
          { bind: [storeId], transaction: t },
        );
        await audit(master, t, {
          actorUserId: null,
          storeId,
          action: 'store.database.password_rotated',
          targetType: 'store',
          targetId: storeId,
          data: { actor, server: row.server },
        });
        await deps.adminPools.withAdmin(server.adminUrl, (admin) =>
          admin.query(`ALTER ROLE ${ident(connection.user)} PASSWORD ${literal(connection.password)}`),
        );
        return true;
      });

      // 4. Every instance connects with the new password from now on.
      await deps.invalidate(storeId);
      return committed
        ? ({ storeId, outcome: 'rotated', server: row.server } as const)
        : ({ storeId, outcome: 'skipped', reason: 'finished by another attempt', server: row.server } as const);
    });
  } catch (err) {
    return { storeId, outcome: 'failed', reason: (err as Error).message };
  }
}

const literal = (value: string) => `'${value.replace(/'/g, "''")}'`;

/**
 * Rotate these stores' passwords, `concurrency` at a time. `onDone` hears of each store as it ends. Each holds
 * two master connections at once (the lock, the writes): the master pool needs more than 2 × `concurrency`.
 */
export async function rotateStorePasswords(
  deps: PasswordDeps,
  storeIds: readonly string[],
  opts: { actor: string; concurrency?: number; onDone?: (r: StoreRotation) => void },
): Promise<StoreRotation[]> {
  const gate = new Semaphore(opts.concurrency ?? 4, Number.MAX_SAFE_INTEGER);
  return Promise.all(
    storeIds.map((id) =>
      gate.run(async () => {
        const r = await rotateStorePassword(deps, id, opts.actor);
        opts.onDone?.(r);
        return r;
      }),
    ),
  );
}

/** Every store with a database (the command without --stores): external ones are then skipped and reported. */
export async function allStoresWithDatabase(master: MasterDb): Promise<string[]> {
  const rows = await master.sequelize.query<{ id: string }>(
    'SELECT store_id AS id FROM store_databases ORDER BY store_id',
    { type: QueryTypes.SELECT },
  );
  return rows.map((r) => r.id);
}

/**
 * The stores the scheduled task rotates now: unfinished rotations first, then managed ready stores whose
 * password is older than `days` (0: none), oldest first, at most `limit` in all.
 */
export async function storesDue(master: MasterDb, days: number, limit: number): Promise<string[]> {
  const rows = await master.sequelize.query<{ id: string }>(
    `(SELECT store_id AS id, 0 AS o, created_at AS at FROM store_databases WHERE pending_credentials IS NOT NULL)
     UNION ALL
     (SELECT store_id, 1, coalesce(credentials_rotated_at, created_at) FROM store_databases
       WHERE $1::int > 0 AND mode = 'managed' AND status = 'ready' AND pending_credentials IS NULL
         AND coalesce(credentials_rotated_at, created_at) < now() - make_interval(days => $1::int))
     ORDER BY o, at LIMIT $2`,
    { bind: [days, limit], type: QueryTypes.SELECT },
  );
  return rows.map((r) => r.id);
}

/** The maintenance task: finish unfinished rotations, rotate the passwords due (bounded per run). */
export async function rotateDuePasswords(
  deps: PasswordDeps,
  settings: { days: number; perRun: number },
): Promise<Record<string, number>> {
  const due = await storesDue(deps.master, settings.days, settings.perRun);
  const results = await rotateStorePasswords(deps, due, { actor: 'schedule', concurrency: 1 });
  const count = (o: RotationOutcome) => results.filter((r) => r.outcome === o).length;
  return { rotated: count('rotated'), skipped: count('skipped'), failed: count('failed') };
}
