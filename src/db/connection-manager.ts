import { LRUCache } from 'lru-cache';
import { ConnectionAcquireTimeoutError, QueryTypes } from 'sequelize';
import type { EventBus } from '../lib/bus';
import { secretContext, type Encryptor } from '../lib/crypto';
import { AppError, ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import type { StoreStatus } from '../models/master';
import { ClientErrorCode } from './budgeted-client';
import { BudgetTimeoutError, ConnectionBudget } from './connection-budget';
import { isConnectionFailure, PgCode, pgCode } from './errors';
import { HostResolver, type HostResolverOptions } from './host-resolver';
import type { MasterDb } from './master';
import { currentReadMeter, type TenantGuard } from './tenant-context';
import { TenantHandle, type HandleSettings } from './tenant-handle';
import type { ConnectionSlots, TenantConnection } from './tenant-types';
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

/**
 * The only owner of tenant database handles. Two budgets: many cheap cached handles (an LRU of
 * TENANT_CACHE_MAX) and few connections (pools of min 0 and TENANT_POOL_MAX, all under one
 * TENANT_CONNECTIONS_MAX cap). Failing tenants are fenced for a while so they cost the others nothing.
 */
export class ConnectionManager implements TenantGuard {
  readonly budget: ConnectionBudget;
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
  ) {
    this.budget = new ConnectionBudget(options.connectionsMax, options.acquireTimeoutMs, {
      ownerShare: options.ownerShare,
    });
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

  /** Run tenant work, turning a failing database into a fast TENANT_UNAVAILABLE for this store only. */
  async guard<T>(handle: TenantHandle, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      throw this.classify(handle.storeId, err);
    }
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
    return {
      handles: this.handles.size,
      handlesMax: this.options.cacheMax,
      connections: {
        open: this.budget.open,
        max: this.budget.max,
        peak: this.budget.peak,
        waiting: this.budget.waiting,
        waits: this.budget.waits,
        avgWaitMs: this.budget.waits ? +(this.budget.waitedMs / this.budget.waits).toFixed(1) : 0,
        waitTimeouts: this.budget.timeouts,
        reclaimed: this.budget.reclaimed,
        /** What the stores of one owner may hold together, and what each owner holds and waits for now. */
        ownerMax: this.budget.ownerMax,
        perOwner: this.budget.ownerUsage(),
      },
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
    this.budget.close();
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
    const handle = new TenantHandle(storeId, rows[0].ownerId, connection, this.slotsFor(connection), {
      ...this.settings,
      publicOnly: mustBePublic(rows[0].mode, this.options),
    });
    this.handles.set(storeId, handle);
    this.counters.builds++;
    this.counters.buildMsTotal += performance.now() - started;
    return handle;
  }

  /**
   * Where a handle's connections take their slots: one budget for every server today (TENANT_CONNECTIONS_MAX
   * per instance). A budget per Postgres server would be chosen here, by the connection's host and port.
   */
  private slotsFor(_connection: TenantConnection): ConnectionSlots {
    return this.budget;
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

  private classify(storeId: string, err: unknown): unknown {
    if (err instanceof AppError) return err;
    const budgetFull =
      err instanceof ConnectionAcquireTimeoutError ||
      err instanceof BudgetTimeoutError ||
      (err as { parent?: unknown }).parent instanceof BudgetTimeoutError;
    if (budgetFull) {
      // Every slot is busy: the instance is overloaded, the store is not at fault — no fence.
      return fail(ErrorCode.TENANT_UNAVAILABLE, 'The server is busy; try again shortly', { retryAfterSeconds: 1 });
    }
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
