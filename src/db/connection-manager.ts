import { LRUCache } from 'lru-cache';
import { ConnectionAcquireTimeoutError, QueryTypes } from 'sequelize';
import type { EventBus } from '../lib/bus';
import { secretContext, type Encryptor } from '../lib/crypto';
import { AppError, ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import type { StoreStatus } from '../models/master';
import { ClientErrorCode } from './budgeted-client';
import { BudgetTimeoutError, ownerMaxFor } from './connection-budget';
import { isConnectionFailure, isServerFull, PgCode, pgCode } from './errors';
import { HostResolver, type HostResolverOptions } from './host-resolver';
import type { MasterDb } from './master';
import { ServerBudgets, type ManagedServer, type ServerBudget } from './server-budgets';
import type { ServerLeases } from './server-leases';
import { currentReadMeter, type TenantGuard } from './tenant-context';
import { TenantHandle, type HandleSettings } from './tenant-handle';
import type { TenantConnection } from './tenant-types';
import { mustBePublic } from '../lib/network-guard';

export interface ConnectionManagerOptions extends HostResolverOptions {
  cacheMax: number;
  poolMax: number;
  idleMs: number;
  connectionsMax: number;
  acquireTimeoutMs: number;
  fenceMs: number;
  /** How long a store that cannot be served (not ready, suspended) is remembered as such. */
  statusTtlMs?: number;
  /** External store databases may be reached on public addresses only (EXTERNAL_DB_PRIVATE_NETWORKS=deny). */
  externalPublicOnly?: boolean;
  /** Session limits of every tenant connection (ms); see HandleSettings. */
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
  idleInTransactionTimeoutMs?: number;
  /** The part of connectionsMax one owner's stores may hold together (0–1]; default 1. */
  ownerShare?: number;
  /** Most bytes one request may read from its store's database; default: no limit. */
  maxReadBytes?: number;
  /** Servers whose connection budget is read from their settings (TENANT_SERVERS, or the master's). */
  managedServers?: ManagedServer[];
  /** `host:port` of the master's server, and its pool per process (kept out of that server's budget). */
  masterKey?: string;
  masterPoolMax?: number;
  /** TENANT_SERVER_HEADROOM, EXTERNAL_SERVER_CONNECTIONS, TENANT_SERVER_BUDGET_REFRESH_MS. */
  serverHeadroom?: number;
  externalServerConnections?: number;
  serverBudgetRefreshMs?: number;
}

/** What the master DB says about a store: as much as deciding whether to serve it needs. */
export interface StoreState {
  status: StoreStatus;
  dbStatus: string | null;
  credentials: string | null;
}

/**
 * Why a store is not served (an error its feature chose: db knows connections, not what a store's state
 * means to a client), or undefined to serve it. `undefined` state: no such store.
 */
export type StoreRefusal = (state: StoreState | undefined) => Error | undefined;

interface StoreRecord extends StoreState {
  mode: 'managed' | 'external' | null;
  ownerId: string;
}

/** Errors of a database that answers, but too slowly: the server's own timeouts and ours. */
const TOO_SLOW = new Set<string>([
  PgCode.QUERY_CANCELED,
  PgCode.LOCK_NOT_AVAILABLE,
  PgCode.IDLE_IN_TRANSACTION_TIMEOUT,
  ClientErrorCode.QUERY_TIMEOUT,
]);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Back-off between attempts to connect to a server that refused a session as full (ms): doubling, at most this. */
const FULL_RETRY_FIRST_MS = 20;
const FULL_RETRY_MAX_MS = 250;

/**
 * The only owner of tenant database handles. Two budgets: many cheap cached handles (an LRU of
 * TENANT_CACHE_MAX) and few connections (pools of min 0 and TENANT_POOL_MAX, under one budget per Postgres
 * server, shared with the other processes through leases: see server-budgets.ts and server-leases.ts).
 * Failing tenants are fenced for a while so they cost the others nothing; a full server is overload, not a
 * failing tenant.
 */
export class ConnectionManager implements TenantGuard {
  /** One local budget per Postgres server, each sized by this process's lease there. */
  readonly servers: ServerBudgets;
  /** The server each handle's connections go to. */
  private readonly serverOf = new WeakMap<TenantHandle, ServerBudget>();
  private readonly handles: LRUCache<string, TenantHandle>;
  private readonly building = new Map<string, Promise<TenantHandle>>();
  /** Stores that cannot be served right now (not ready, suspended, missing), remembered briefly. */
  private readonly refusals: LRUCache<string, Error>;
  /** Which store a hostname belongs to. */
  readonly hosts: HostResolver;
  private readonly fences = new Map<string, { until: number; reason: string }>();
  private readonly settings: HandleSettings;
  private readonly counters = { hits: 0, misses: 0, evictions: 0, builds: 0, buildMsTotal: 0, fenced: 0 };

  constructor(
    private readonly master: MasterDb,
    private readonly encryptor: Encryptor,
    private readonly bus: EventBus,
    readonly options: ConnectionManagerOptions,
    private readonly refusalFor: StoreRefusal,
    /** The leases of this process (absent: every server gets TENANT_CONNECTIONS_MAX, as a process alone). */
    private readonly leases?: ServerLeases,
  ) {
    this.servers = new ServerBudgets(
      {
        connectionsMax: options.connectionsMax,
        acquireTimeoutMs: options.acquireTimeoutMs,
        ownerShare: options.ownerShare,
        managed: options.managedServers ?? [],
        masterKey: options.masterKey,
        masterPoolMax: options.masterPoolMax ?? 0,
        headroom: options.serverHeadroom ?? 0,
        externalConnections: options.externalServerConnections ?? options.connectionsMax,
        refreshMs: options.serverBudgetRefreshMs ?? 60_000,
      },
      leases,
    );
    this.settings = {
      poolMax: options.poolMax,
      idleMs: options.idleMs,
      acquireTimeoutMs: options.acquireTimeoutMs,
      connectTimeoutMs: Math.min(1000, options.acquireTimeoutMs),
      statementTimeoutMs: options.statementTimeoutMs,
      lockTimeoutMs: options.lockTimeoutMs,
      idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs,
      maxReadBytes: options.maxReadBytes,
      readMeter: currentReadMeter,
    };
    this.handles = new LRUCache<string, TenantHandle>({
      max: options.cacheMax,
      dispose: (handle, _key, reason) => {
        if (reason === 'evict') this.counters.evictions++;
        void handle
          .close()
          .catch((err: Error) =>
            logger.warn({ storeId: handle.storeId, err: err.message }, 'closing a tenant handle failed'),
          );
      },
    });
    this.refusals = new LRUCache({ max: 10_000, ttl: options.statusTtlMs ?? 2000 });
    this.hosts = new HostResolver(master, bus, options);
    bus.on('tenant.invalidate', (e) => this.dropLocal(e.storeId));
    bus.onReconnect(() => {
      // Messages may have been missed while disconnected: forget everything that could be stale.
      this.refusals.clear();
      this.handles.clear();
    });
  }

  /** A ready handle for an active store. Concurrent first requests share one build. */
  forStore(storeId: string): Promise<TenantHandle> {
    const cached = this.cachedHandle(storeId);
    return cached ? Promise.resolve(cached) : this.buildOnce(storeId);
  }

  /**
   * The cached handle, without a promise: the hot path asks this first (every awaited promise costs, more
   * so with AsyncLocalStorage on). Throws while the store is fenced; undefined means: ask forStore.
   */
  cachedHandle(storeId: string): TenantHandle | undefined {
    this.checkFence(storeId);
    const cached = this.handles.get(storeId);
    if (cached) this.counters.hits++;
    return cached;
  }

  private async buildOnce(storeId: string): Promise<TenantHandle> {
    const refused = this.refusals.get(storeId);
    if (refused) throw refused;
    let pending = this.building.get(storeId);
    if (!pending) {
      this.counters.misses++;
      pending = this.build(storeId).finally(() => this.building.delete(storeId));
      this.building.set(storeId, pending);
    }
    return pending;
  }

  /**
   * Run tenant work, turning a failing database into a fast TENANT_UNAVAILABLE for this store only. A server
   * that refuses the session as full is tried again (see retryWhileFull).
   */
  async guard<T>(handle: TenantHandle, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      if (isServerFull(err)) return this.retryWhileFull(handle, work);
      throw this.classify(handle, err);
    }
  }

  /**
   * The server refused a new session (53300: someone else holds its slots). Nothing ran yet — the refusal
   * comes before the session exists — so the work is tried again, with a short doubling back-off, until the
   * acquire timeout; then 503 busy. Never a fence, never the store's failure.
   */
  private async retryWhileFull<T>(handle: TenantHandle, work: () => Promise<T>): Promise<T> {
    const server = this.serverOf.get(handle);
    const deadline = Date.now() + this.options.acquireTimeoutMs;
    for (let delay = FULL_RETRY_FIRST_MS; ; delay = Math.min(delay * 2, FULL_RETRY_MAX_MS)) {
      if (server) server.serverRefusals++;
      if (Date.now() + delay >= deadline) break;
      await sleep(delay);
      try {
        return await work();
      } catch (err) {
        if (!isServerFull(err)) throw this.classify(handle, err);
      }
    }
    throw this.busy(handle);
  }

  /** 503 busy: no slot in time, or the server stayed full. The store is not at fault — no fence. */
  private busy(handle: TenantHandle): AppError {
    const server = this.serverOf.get(handle);
    if (server) server.busyRefusals++;
    return fail(ErrorCode.TENANT_UNAVAILABLE, 'The server is busy; try again shortly', { retryAfterSeconds: 1 });
  }

  /** Drop a store's handle and cached state on every API instance (credentials rotated, suspended, deleted…). */
  async invalidate(storeId: string): Promise<void> {
    await this.bus.publish({ type: 'tenant.invalidate', storeId });
  }

  /** Tell every instance that these hostnames changed owner. */
  async hostnamesChanged(hostnames: string[]): Promise<void> {
    if (hostnames.length) await this.bus.publish({ type: 'hostnames.changed', hostnames });
  }

  stats() {
    const perStore = [...this.handles.entries()]
      .filter(([, h]) => h.open > 0 || h.leases > 0)
      .map(([storeId, h]) => ({ storeId, ownerId: h.ownerId, ...h.stats() }));
    const now = Date.now();
    const budgets = this.servers.all().map((s) => s.budget);
    const sum = (read: (b: (typeof budgets)[number]) => number) => budgets.reduce((n, b) => n + read(b), 0);
    const waits = sum((b) => b.waits);
    const perOwner = new Map<string, { ownerId: string; open: number; peak: number; waiting: number }>();
    for (const usage of budgets.flatMap((b) => b.ownerUsage())) {
      const seen = perOwner.get(usage.ownerId);
      if (!seen) perOwner.set(usage.ownerId, { ...usage });
      else {
        seen.open += usage.open;
        seen.peak += usage.peak;
        seen.waiting += usage.waiting;
      }
    }
    return {
      /** This process among the lease holders. */
      instanceId: this.leases?.instanceId ?? 'local',
      handles: this.handles.size,
      handlesMax: this.options.cacheMax,
      /** Over every server (peaks: the sum of each server's peak). */
      connections: {
        open: sum((b) => b.open),
        max: this.options.connectionsMax,
        peak: sum((b) => b.peak),
        waiting: sum((b) => b.waiting),
        waits,
        avgWaitMs: waits ? +(sum((b) => b.waitedMs) / waits).toFixed(1) : 0,
        waitTimeouts: sum((b) => b.timeouts),
        reclaimed: sum((b) => b.reclaimed),
        /** What the stores of one owner may hold together in this process, and what each owner holds and waits for now. */
        ownerMax: ownerMaxFor(this.options.connectionsMax, this.options.ownerShare ?? 1),
        perOwner: [...perOwner.values()],
      },
      /** Per Postgres server: its budget, the leases, what is open here, waits and refusals. */
      servers: this.servers.all().map((s) => s.stats()),
      hits: this.counters.hits,
      misses: this.counters.misses,
      evictions: this.counters.evictions,
      builds: this.counters.builds,
      avgBuildMs: this.counters.builds ? +(this.counters.buildMsTotal / this.counters.builds).toFixed(2) : 0,
      hostCache: this.hosts.stats(),
      fenced: [...this.fences.entries()]
        .filter(([, f]) => f.until > now)
        .map(([storeId, f]) => ({ storeId, until: new Date(f.until).toISOString(), reason: f.reason })),
      fencesTotal: this.counters.fenced,
      perStore,
    };
  }

  /** The handle's state, if one is cached (admin views). */
  peek(storeId: string) {
    return this.handles.peek(storeId)?.stats() ?? null;
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((h) => h.close()));
    this.servers.close();
    await this.leases?.close();
  }

  private dropLocal(storeId: string): void {
    this.handles.delete(storeId);
    this.refusals.delete(storeId);
    this.fences.delete(storeId);
  }

  private async build(storeId: string): Promise<TenantHandle> {
    const started = performance.now();
    const rows = await this.master.sequelize.query<StoreRecord>(
      `SELECT s.status, s.owner_id AS "ownerId", d.status AS "dbStatus", d.mode, d.credentials
         FROM stores s LEFT JOIN store_databases d ON d.store_id = s.id
        WHERE s.id = $1`,
      { bind: [storeId], type: QueryTypes.SELECT },
    );
    const refusal = this.refusalFor(rows[0]);
    if (refusal) {
      this.refusals.set(storeId, refusal);
      throw refusal;
    }
    // Credentials are decrypted here only, and live on inside the handle's Sequelize config.
    const connection = this.credentialsOf(storeId, rows[0].credentials as string);
    const server = this.servers.forServer(connection);
    const handle = new TenantHandle(storeId, rows[0].ownerId, connection, server.budget, {
      ...this.settings,
      publicOnly: mustBePublic(rows[0].mode, this.options),
    });
    this.serverOf.set(handle, server);
    this.handles.set(storeId, handle);
    this.counters.builds++;
    this.counters.buildMsTotal += performance.now() - started;
    return handle;
  }

  /**
   * Credentials that do not decrypt (a key gone from ENCRYPTION_KEYS, a row tampered with or copied from
   * another store) are the platform's fault, not the store's: logged, and this store alone is unavailable.
   */
  private credentialsOf(storeId: string, ciphertext: string): TenantConnection {
    try {
      return this.encryptor.decryptJson<TenantConnection>(ciphertext, secretContext.storeCredentials(storeId));
    } catch (err) {
      logger.error({ storeId, err: (err as Error).message }, 'the credentials of this store do not decrypt');
      const refusal = fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database is not reachable right now", {
        retryAfterSeconds: Math.ceil(this.options.fenceMs / 1000),
      });
      this.refusals.set(storeId, refusal);
      throw refusal;
    }
  }

  private checkFence(storeId: string): void {
    const fence = this.fences.get(storeId);
    if (!fence) return;
    const left = fence.until - Date.now();
    if (left <= 0) {
      // Half-open: the next request tries the database again.
      this.fences.delete(storeId);
      return;
    }
    throw fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database is not reachable right now", {
      retryAfterSeconds: Math.ceil(left / 1000),
    });
  }

  private classify(handle: TenantHandle, err: unknown): unknown {
    if (err instanceof AppError) return err;
    const storeId = handle.storeId;
    const budgetFull =
      err instanceof ConnectionAcquireTimeoutError ||
      err instanceof BudgetTimeoutError ||
      (err as { parent?: unknown }).parent instanceof BudgetTimeoutError;
    // Every slot is busy, or the server itself is full: overload, the store is not at fault — no fence.
    if (budgetFull || isServerFull(err)) return this.busy(handle);
    // The database is alive, only slow, locked or too talkative: this request fails, the store is not fenced.
    const code = pgCode(err);
    if (code === ClientErrorCode.READ_LIMIT)
      return fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database returned more data than allowed", {
        retryAfterSeconds: 1,
      });
    if (code && TOO_SLOW.has(code))
      return fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database did not answer in time; try again shortly", {
        retryAfterSeconds: 1,
      });
    if (!isConnectionFailure(err)) return err;
    const reason = (err as Error).message;
    this.fences.set(storeId, { until: Date.now() + this.options.fenceMs, reason });
    this.counters.fenced++;
    // Connections to a failed database are useless; drop the pool, keep nothing half-broken.
    this.handles.delete(storeId);
    logger.warn({ storeId, reason }, 'tenant database failed; fenced');
    return fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database is not reachable right now", {
      retryAfterSeconds: Math.ceil(this.options.fenceMs / 1000),
    });
  }
}
