import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { serverKeyOfUrl, tenantServers, type TenantServer } from '../db/tenant-servers';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import { QueueName } from '../queue/queues';

/**
 * Moving a store's managed database to another tenant server, and draining a server: the requests (API and
 * command line go through here) and the state they are followed by. The work itself is the queue job's
 * (move-runner.ts); everything it needs is in the store_moves / store_drains rows.
 */

export type MoveDeps = Pick<AppContext, 'master' | 'queues' | 'config' | 'masterUrl'>;

/** Who asked: a platform admin (audited as the actor), or the command line (by label). */
export interface Actor {
  userId: string | null;
  label: string;
}

export const ACTIVE_MOVE_STATES = ['queued', 'copying', 'catching_up', 'switching'] as const;
export type MoveState = (typeof ACTIVE_MOVE_STATES)[number] | 'completed' | 'failed';

export interface MoveRow {
  id: string;
  store_id: string;
  drain_id: string | null;
  state: MoveState;
  source_server: string;
  source_database: string;
  target_server: string;
  target_database: string | null;
  role: string | null;
  rows_copied: string | null;
  changes_replayed: string | null;
  write_pause_ms: number | null;
  attempts: number;
  error: string | null;
  requested_by: string;
  requested_by_user: string | null;
  dispatched_at: Date | null;
  drop_after: Date | null;
}

export const moveJobId = (moveId: string) => `move-${moveId}`;

const select = <R extends object>(deps: MoveDeps, sql: string, bind: unknown[], t?: Transaction) =>
  deps.master.sequelize.query<R>(sql, { bind, type: QueryTypes.SELECT, transaction: t });

const run = (deps: MoveDeps, sql: string, bind: unknown[], t?: Transaction) =>
  deps.master.sequelize.query(sql, { bind, transaction: t });

/** Queue the move's job (one per move: a second add of the same id is a no-op while it exists). */
export async function queueMove(deps: MoveDeps, moveId: string): Promise<string> {
  const jobId = moveJobId(moveId);
  await deps.queues.get(QueueName.storeMoves).add('move', { moveId }, { jobId, attempts: 1 });
  return jobId;
}

const badServer = (detail: string) =>
  fail(ErrorCode.VALIDATION_FAILED, detail, { errors: [{ path: 'server', message: detail }] });

/** The store, locked, if it may be moved now (else the refusal that says why, changing nothing). */
async function movableStore(deps: MoveDeps, storeId: string, t: Transaction) {
  const [store] = await select<{ status: string }>(
    deps,
    `SELECT status FROM stores WHERE id = $1::uuid FOR UPDATE`,
    [storeId],
    t,
  );
  if (!store || store.status === 'deleted') throw noSuchStore();
  if (store.status !== 'active')
    throw fail(ErrorCode.CONFLICT, `Only an active store can be moved; this one is ${store.status}`);
  const [db] = await select<{ mode: string; status: string; server: string | null; database_name: string | null }>(
    deps,
    `SELECT mode, status, server, database_name FROM store_databases WHERE store_id = $1::uuid`,
    [storeId],
    t,
  );
  if (!db || db.status !== 'ready') throw fail(ErrorCode.STORE_NOT_READY, 'This store has no database ready yet');
  if (db.mode !== 'managed')
    throw fail(ErrorCode.CONFLICT, "This store's database is its owner's own: the platform cannot move it");
  const [busy] = await select<{ kind: string }>(
    deps,
    `SELECT 'move' AS kind FROM store_moves WHERE store_id = $1::uuid AND state = ANY($2::text[])
     UNION ALL
     SELECT 'restore' FROM store_restores WHERE store_id = $1::uuid AND state IN ('queued', 'running')
     LIMIT 1`,
    [storeId, ACTIVE_MOVE_STATES],
    t,
  );
  if (busy)
    throw fail(
      ErrorCode.CONFLICT,
      busy.kind === 'move' ? 'A move of this store is already in progress' : 'A restore of this store is in progress',
    );
  return { server: db.server!, database: db.database_name! };
}

/** A new move row (and its audit entry) in the caller's transaction. */
async function insertMove(
  deps: MoveDeps,
  t: Transaction,
  actor: Actor,
  move: { storeId: string; source: string; database: string; target: string; drainId: string | null },
): Promise<string> {
  const [row] = await select<{ id: string }>(
    deps,
    `INSERT INTO store_moves (store_id, drain_id, source_server, source_database, target_server, requested_by,
                              requested_by_user, dispatched_at)
     VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7::uuid, CASE WHEN $2::uuid IS NULL THEN now() END)
     RETURNING id`,
    [move.storeId, move.drainId, move.source, move.database, move.target, actor.label, actor.userId],
    t,
  );
  await audit(deps.master, t, {
    actorUserId: actor.userId,
    storeId: move.storeId,
    action: 'store.move.requested',
    targetType: 'store',
    targetId: move.storeId,
    data: { moveId: row.id, from: move.source, to: move.target, by: actor.label, drainId: move.drainId },
  });
  return row.id;
}

/**
 * The tenant server named `host:port` or by its postgres:// URL (only host and port are read), or the 400 that
 * lists the configured ones. Only a configured server is ever chosen: nothing sent is connected to.
 */
function configuredServer(deps: MoveDeps, server: string): TenantServer {
  let key = server;
  if (/^postgres(?:ql)?:\/\//.test(server))
    try {
      key = serverKeyOfUrl(server);
    } catch {
      // Unparsable: matches no server.
    }
  const servers = tenantServers(deps);
  const found = servers.find((s) => s.key === key);
  if (!found) throw badServer(`"${server}" is not one of the tenant servers (${servers.map((s) => s.key).join(', ')})`);
  return found;
}

/**
 * POST /api/admin/stores/:id/move and `tenantry tenants:move`: check everything, record the move (queued),
 * queue its job. Refusals change nothing: an unknown store 404, an unknown or the same server 400, an
 * external database, a store not active or already moving 409.
 */
export async function requestMove(
  deps: MoveDeps,
  actor: Actor,
  storeId: string,
  server: string,
): Promise<{ jobId: string; moveId: string }> {
  const moveId = await deps.master.sequelize.transaction(async (t) => {
    // The store first: an unknown store is 404 whatever the server.
    const current = await movableStore(deps, storeId, t);
    const target = configuredServer(deps, server);
    if (current.server === target.key) throw badServer('The store is already on that server');
    return insertMove(deps, t, actor, {
      storeId,
      source: current.server,
      database: current.database,
      target: target.key,
      drainId: null,
    });
  });
  return { jobId: await queueMove(deps, moveId), moveId };
}

export interface MoveStatus {
  moveId: string;
  storeId: string;
  state: MoveState;
  from: string;
  to: string;
  rowsCopied: number | null;
  changesReplayed: number | null;
  writePauseMs: number | null;
  error: string | null;
}

const statusOf = (r: MoveRow): MoveStatus => ({
  moveId: r.id,
  storeId: r.store_id,
  state: r.state,
  from: r.source_server,
  to: r.target_server,
  rowsCopied: r.rows_copied === null ? null : Number(r.rows_copied),
  changesReplayed: r.changes_replayed === null ? null : Number(r.changes_replayed),
  writePauseMs: r.write_pause_ms,
  error: r.error,
});

/** A move by its id, or by its job id (`move-<id>`). */
export async function getMove(deps: MoveDeps, id: string): Promise<MoveStatus> {
  const moveId = id.startsWith('move-') ? id.slice('move-'.length) : id;
  if (!/^[0-9a-f-]{36}$/i.test(moveId)) throw fail(ErrorCode.NOT_FOUND, 'No such move');
  const [row] = await select<MoveRow>(deps, `SELECT * FROM store_moves WHERE id = $1::uuid`, [moveId]);
  if (!row) throw fail(ErrorCode.NOT_FOUND, 'No such move');
  return statusOf(row);
}

/** The store's latest move (the one a `tenants:move` of it attaches to). */
export async function latestMoveOf(deps: MoveDeps, storeId: string): Promise<MoveStatus | null> {
  const [row] = await select<MoveRow>(
    deps,
    `SELECT * FROM store_moves WHERE store_id = $1::uuid ORDER BY created_at DESC LIMIT 1`,
    [storeId],
  );
  return row ? statusOf(row) : null;
}

// ---- Drains ----

export interface DrainStatus {
  drainId: string;
  server: string;
  state: 'running' | 'completed' | 'failed';
  perServer: number;
  total: number;
  completed: number;
  failed: number;
  active: number;
  failures: { storeId: string; error: string | null }[];
}

/**
 * `tenantry tenants:drain <server>`: every active managed store of the server gets a move (a drain row and one
 * queued move per store, in one transaction), each to the server that holds the fewest stores counting the
 * moves already planned (as provisioning places new stores); `perServer` of them run at a time. A drain of
 * that server already running is returned as it is (the command attaches to it).
 */
export async function startDrain(
  deps: MoveDeps,
  actor: Actor,
  named: string,
  perServer: number,
): Promise<{ drainId: string; created: boolean }> {
  const server = configuredServer(deps, named).key;
  const others = tenantServers(deps).filter((s) => s.key !== server);
  if (!others.length) throw fail(ErrorCode.CONFLICT, 'There is no other tenant server to move the stores to');
  const result = await deps.master.sequelize.transaction(async (t) => {
    // Drains start one at a time: the lock orders two commands given at once.
    await select(deps, `SELECT pg_advisory_xact_lock(hashtext('tenantry:store-drains'))`, [], t);
    const [running] = await select<{ id: string }>(
      deps,
      `SELECT id FROM store_drains WHERE server = $1 AND state = 'running'`,
      [server],
      t,
    );
    if (running) return { drainId: running.id, created: false };
    const [drain] = await select<{ id: string }>(
      deps,
      `INSERT INTO store_drains (server, per_server, requested_by) VALUES ($1, $2, $3) RETURNING id`,
      [server, perServer, actor.label],
      t,
    );
    const stores = await select<{ store_id: string; database_name: string }>(
      deps,
      `SELECT d.store_id, d.database_name FROM store_databases d JOIN stores s ON s.id = d.store_id
        WHERE d.mode = 'managed' AND d.status = 'ready' AND d.server = $1 AND s.status = 'active'
          AND NOT EXISTS (SELECT 1 FROM store_moves m WHERE m.store_id = d.store_id AND m.state = ANY($2::text[]))
        ORDER BY s.created_at, s.id FOR UPDATE OF s`,
      [server, ACTIVE_MOVE_STATES],
      t,
    );
    const counts = await select<{ server: string; n: number }>(
      deps,
      `SELECT server, count(*)::int AS n FROM store_databases WHERE mode = 'managed' AND server = ANY($1::text[]) GROUP BY server`,
      [others.map((s) => s.key)],
      t,
    );
    const load = new Map(counts.map((c) => [c.server, c.n]));
    for (const store of stores) {
      const target = others.reduce((best, s) => ((load.get(s.key) ?? 0) < (load.get(best.key) ?? 0) ? s : best));
      load.set(target.key, (load.get(target.key) ?? 0) + 1);
      await insertMove(deps, t, actor, {
        storeId: store.store_id,
        source: server,
        database: store.database_name,
        target: target.key,
        drainId: drain.id,
      });
    }
    return { drainId: drain.id, created: true };
  });
  await kickDrain(deps, result.drainId);
  return result;
}

/**
 * Keep a drain going: queue its next moves while fewer than `per_server` run, and close it once every move
 * has ended (completed when they all completed). Called when it starts, when each of its moves ends, by the
 * maintenance task (a move whose job was lost), and by a command attaching to it. Idempotent.
 */
export async function kickDrain(deps: MoveDeps, drainId: string): Promise<void> {
  const queued = await deps.master.sequelize.transaction(async (t) => {
    const [drain] = await select<{ per_server: number; state: string }>(
      deps,
      `SELECT per_server, state FROM store_drains WHERE id = $1::uuid FOR UPDATE`,
      [drainId],
      t,
    );
    if (drain?.state !== 'running') return [];
    const [counts] = await select<{ running: number; waiting: number; failed: number }>(
      deps,
      `SELECT count(*) FILTER (WHERE state = ANY($2::text[]) AND dispatched_at IS NOT NULL)::int AS running,
              count(*) FILTER (WHERE state = 'queued' AND dispatched_at IS NULL)::int AS waiting,
              count(*) FILTER (WHERE state = 'failed')::int AS failed
         FROM store_moves WHERE drain_id = $1::uuid`,
      [drainId, ACTIVE_MOVE_STATES],
      t,
    );
    if (counts.running === 0 && counts.waiting === 0) {
      await run(
        deps,
        `UPDATE store_drains SET state = $2, finished_at = now(), updated_at = now() WHERE id = $1::uuid`,
        [drainId, counts.failed ? 'failed' : 'completed'],
        t,
      );
      return [];
    }
    const room = Math.max(0, drain.per_server - counts.running);
    if (!room) return [];
    const next = await select<{ id: string }>(
      deps,
      `UPDATE store_moves SET dispatched_at = now(), updated_at = now()
        WHERE id IN (SELECT id FROM store_moves WHERE drain_id = $1::uuid AND state = 'queued' AND dispatched_at IS NULL
                      ORDER BY created_at, id LIMIT $2)
        RETURNING id`,
      [drainId, room],
      t,
    );
    return next.map((n) => n.id);
  });
  for (const id of queued) await queueMove(deps, id);
}

/** A drain and its moves' counts and failures. */
export async function drainStatus(deps: MoveDeps, drainId: string): Promise<DrainStatus> {
  const [drain] = await select<{ id: string; server: string; state: DrainStatus['state']; per_server: number }>(
    deps,
    `SELECT id, server, state, per_server FROM store_drains WHERE id = $1::uuid`,
    [drainId],
  );
  if (!drain) throw fail(ErrorCode.NOT_FOUND, 'No such drain');
  const moves = await select<{ store_id: string; state: MoveState; error: string | null }>(
    deps,
    `SELECT store_id, state, error FROM store_moves WHERE drain_id = $1::uuid ORDER BY created_at, id`,
    [drainId],
  );
  return {
    drainId: drain.id,
    server: drain.server,
    state: drain.state,
    perServer: drain.per_server,
    total: moves.length,
    completed: moves.filter((m) => m.state === 'completed').length,
    failed: moves.filter((m) => m.state === 'failed').length,
    active: moves.filter((m) => m.state !== 'queued' && m.state !== 'completed' && m.state !== 'failed').length,
    failures: moves.filter((m) => m.state === 'failed').map((m) => ({ storeId: m.store_id, error: m.error })),
  };
}

/** The server's running drain, if any (what `tenants:drain <server>` attaches to). */
export async function runningDrainOf(deps: MoveDeps, server: string): Promise<string | null> {
  const [row] = await select<{ id: string }>(
    deps,
    `SELECT id FROM store_drains WHERE server = $1 AND state = 'running'`,
    [server],
  );
  return row?.id ?? null;
}
