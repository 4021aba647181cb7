import { LRUCache } from 'lru-cache';
import { ConnectionAcquireTimeoutError, QueryTypes } from 'sequelize';
import type { EventBus } from '../lib/bus';
import { secretContext, type Encryptor } from '../lib/crypto';
import { AppError, ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import type { StoreStatus } from '../models/master';
import { ClientErrorCode } from './budgeted-client';
import { BudgetTimeoutError, ownerMaxFor } from './connection-budget';
import {
  isConnectionFailure,
  isServerFull,
  isTransientConnectionFailure,
  PgCode,
  pgCode,
  storeMovingRefusal,
} from './errors';
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
  /** What the running code needs of a store's schema (absent: any schema is served, as before). */
  schema?: SchemaGate;
}

/**
 * The lowest tenant schema the running code serves, and how a store behind it is brought there. The
 * migration is injected (db knows connections, not how a feature migrates a store).
 */
export interface SchemaGate {
  minVersion: number;
  /** Migrate the store's database; resolves to the version it reached, null when it failed. */
  migrate: (storeId: string) => Promise<number | null>;
  /** How long a request waits for its store's migration before 503 TENANT_MIGRATING (ms); default 2000. */
  waitMs?: number;
}

/** What the master DB says about a store: as much as deciding whether to serve it needs. */
export interface StoreState {
  status: StoreStatus;
  dbStatus: string | null;
  credentials: string | null;
  /** store_databases.schema_version (null: no database row). */
  schemaVersion?: number | null;
  /** A fleet run is migrating its database now (its row `running`): for instances that missed the bus event. */
  migrating?: boolean;
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
 * How long a store is taken as migrating after the event said so, without the event saying it is done: then
 * its state is read from the master again (a migrating session that died leaves no "migrated" event).
 */
const MIGRATING_MARK_MS = 30_000;

interface MigratingMark {
  until: number;
  waiters: Set<() => void>;
}

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
  private readonly counters = {
    hits: 0,
    misses: 0,
    evictions: 0,
    builds: 0,
    buildMsTotal: 0,
    fenced: 0,
    migratedOnDemand: 0,
    migratingRefusals: 0,
  };
  /** Stores whose database is being migrated now (bus events, or the master's run rows): requests wait. */
  private readonly migrating = new Map<string, MigratingMark>();
  /** On-demand migrations in flight in this process: concurrent first requests share one. */
  private readonly onDemand = new Map<string, Promise<number | null>>();
  /**
   * The handle built from the master's credentials again after this (cached) one's password was refused: one
   * re-read per handle, so concurrent requests failing on it share it.
   */
  private readonly rereads = new WeakMap<TenantHandle, Promise<TenantHandle>>();

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
    bus.on('tenant.migrating', (e) => this.markMigrating(e.storeId));
    bus.on('tenant.migrated', (e) => this.migrationDone(e.storeId));
    bus.onReconnect(() => {
      // Messages may have been missed while disconnected: forget everything that could be stale.
      this.refusals.clear();
      this.handles.clear();
      for (const storeId of [...this.migrating.keys()]) this.migrationDone(storeId);
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
    // A store being migrated is answered after its migration (forStore waits for it).
    if (this.migrating.size && this.migrating.has(storeId)) return undefined;
    const cached = this.handles.get(storeId);
    if (cached) this.counters.hits++;
    return cached;
  }

  private async buildOnce(storeId: string): Promise<TenantHandle> {
    if (this.migrating.has(storeId)) {
      await this.waitForMigration(storeId);
      const cached = this.handles.get(storeId);
      if (cached) return cached;
    }
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
   * that refuses the session as full is tried again (see retryWhileFull); one that refuses the password is
   * tried again with the master's credentials (see retryWithFreshCredentials). The work is given the handle
   * to use: after a password refusal, that is not the one it was first given.
   */
  async guard<T>(handle: TenantHandle, work: (handle: TenantHandle) => Promise<T>): Promise<T> {
    try {
      return await work(handle);
    } catch (err) {
      if (isServerFull(err)) return this.retryWhileFull(handle, work);
      if (pgCode(err) === PgCode.INVALID_PASSWORD) return this.retryWithFreshCredentials(handle, work, err);
      throw this.classify(handle, err);
    }
  }

  /**
   * The server refused the password of a new session (28P01). A rotation changes it on the server before the
   * bus tells this instance (tenant.invalidate): the cached handle may hold the old one. Nothing ran yet, so
   * the work is tried once more on a handle built from the master's credentials, read again (once for every
   * request failing on the same handle); only if those are refused too is the store fenced, as before.
   */
  private async retryWithFreshCredentials<T>(
    stale: TenantHandle,
    work: (handle: TenantHandle) => Promise<T>,
    refused: unknown,
  ): Promise<T> {
    let pending = this.rereads.get(stale);
    if (!pending) {
      const storeId = stale.storeId;
      if (this.handles.peek(storeId) === stale) this.handles.delete(storeId);
      pending = this.forStore(storeId);
      this.rereads.set(stale, pending);
    }
    let fresh: TenantHandle;
    try {
      fresh = await pending;
    } catch (err) {
      throw err instanceof AppError ? err : this.classify(stale, refused);
    }
    try {
      return await work(fresh);
    } catch (err) {
      if (isServerFull(err)) return this.retryWhileFull(fresh, work);
      throw this.classify(fresh, err);
    }
  }

  /**
   * The server refused a new session (53300: someone else holds its slots). Nothing ran yet — the refusal
   * comes before the session exists — so the work is tried again, with a short doubling back-off, until the
   * acquire timeout; then 503 busy. Never a fence, never the store's failure.
   */
  private async retryWhileFull<T>(handle: TenantHandle, work: (handle: TenantHandle) => Promise<T>): Promise<T> {
    const server = this.serverOf.get(handle);
    const deadline = Date.now() + this.options.acquireTimeoutMs;
    for (let delay = FULL_RETRY_FIRST_MS; ; delay = Math.min(delay * 2, FULL_RETRY_MAX_MS)) {
      if (server) server.serverRefusals++;
      if (Date.now() + delay >= deadline) break;
      await sleep(delay);
      try {
        return await work(handle);
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
      /** Stores migrated on their first request (below the code's minimum schema), and requests refused meanwhile. */
      migratedOnDemand: this.counters.migratedOnDemand,
      migratingRefusals: this.counters.migratingRefusals,
      migrating: this.migrating.size,
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

  /**
   * A store's database is being migrated (a fleet run, or a migration on demand, here or on another
   * instance): its requests wait for the "migrated" event. The mark expires: then the master is asked again.
   */
  private markMigrating(storeId: string): void {
    const mark = this.migrating.get(storeId);
    if (mark) mark.until = Date.now() + MIGRATING_MARK_MS;
    else this.migrating.set(storeId, { until: Date.now() + MIGRATING_MARK_MS, waiters: new Set() });
  }

  /** Its migration ended (migrated or failed): waiting requests go on, and read the store's state again if refused. */
  private migrationDone(storeId: string): void {
    const mark = this.migrating.get(storeId);
    this.migrating.delete(storeId);
    this.refusals.delete(storeId);
    for (const wake of mark?.waiters ?? []) wake();
  }

  /** Wait (up to the gate's waitMs) for the store's migration to end; then 503 TENANT_MIGRATING. */
  private async waitForMigration(storeId: string): Promise<void> {
    const mark = this.migrating.get(storeId);
    if (!mark) return;
    if (mark.until <= Date.now()) {
      // No word for a long while: forget the mark and the handle, the build reads the master's state again.
      this.migrating.delete(storeId);
      this.handles.delete(storeId);
      return;
    }
    const waitMs = this.options.schema?.waitMs ?? 2000;
    let wake!: () => void;
    const ended = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), waitMs);
      wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      mark.waiters.add(wake);
    });
    mark.waiters.delete(wake);
    if (!ended) throw this.migratingRefusal();
  }

  private migratingRefusal(): AppError {
    this.counters.migratingRefusals++;
    return fail(ErrorCode.TENANT_MIGRATING, "This store's database is being migrated; try again shortly", {
      retryAfterSeconds: 2,
    });
  }

  /**
   * A store below the code's minimum schema: migrated now, one migration per store in this process however
   * many requests ask (each waits up to waitMs, the migration goes on after). Never served below it.
   */
  private async migrateOnDemand(storeId: string, gate: SchemaGate): Promise<void> {
    let pending = this.onDemand.get(storeId);
    if (!pending) {
      this.counters.migratedOnDemand++;
      pending = gate
        .migrate(storeId)
        .catch((err: Error) => {
          logger.warn({ storeId, err: err.message }, 'migrating a store on demand failed');
          return null;
        })
        .finally(() => this.onDemand.delete(storeId));
      this.onDemand.set(storeId, pending);
    }
    let timer: NodeJS.Timeout | undefined;
    const reached = await Promise.race([
      pending,
      new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), gate.waitMs ?? 2000))),
    ]).finally(() => clearTimeout(timer));
    if (reached === 'late') throw this.migratingRefusal();
    if (reached === null || reached < gate.minVersion) {
      // It failed: refused briefly (the refusal cache), then the next request tries again.
      const refusal = this.migratingRefusal();
      this.refusals.set(storeId, refusal);
      throw refusal;
    }
  }

  private dropLocal(storeId: string): void {
    this.handles.delete(storeId);
    this.refusals.delete(storeId);
    this.fences.delete(storeId);
  }

  private async readStore(storeId: string): Promise<StoreRecord | undefined> {
    const rows = await this.master.sequelize.query<StoreRecord>(
      `SELECT s.status, s.owner_id AS "ownerId", d.status AS "dbStatus", d.mode, d.credentials,
              d.schema_version AS "schemaVersion",
              EXISTS (SELECT 1 FROM migration_run_stores m JOIN migration_runs r ON r.id = m.run_id
                       WHERE m.store_id = s.id AND m.state = 'running'
                         AND r.state IN ('canary', 'running', 'paused')) AS migrating
         FROM stores s LEFT JOIN store_databases d ON d.store_id = s.id
        WHERE s.id = $1`,
      { bind: [storeId], type: QueryTypes.SELECT },
    );
    const refusal = this.refusalFor(rows[0]);
    if (refusal) {
      this.refusals.set(storeId, refusal);
      throw refusal;
    }
    return rows[0];
  }

  private async build(storeId: string): Promise<TenantHandle> {
    const started = performance.now();
    let rows = [(await this.readStore(storeId))!];
    const gate = this.options.schema;
    if (gate) {
      // A fleet run is migrating it (an event this instance missed): wait for it like the others.
      if (rows[0].migrating) {
        this.markMigrating(storeId);
        await this.waitForMigration(storeId);
        rows = [(await this.readStore(storeId))!];
      }
      if ((rows[0].schemaVersion ?? 0) < gate.minVersion) {
        await this.migrateOnDemand(storeId, gate);
        rows = [(await this.readStore(storeId))!];
      }
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
    if (code === PgCode.STORE_MOVED) {
      // Its writes are frozen for a move: the next request reads where the store lives from the master again.
      this.handles.delete(storeId);
      return storeMovingRefusal();
    }
    if (code === ClientErrorCode.READ_LIMIT)
      return fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database returned more data than allowed", {
        retryAfterSeconds: 1,
      });
    if (code && TOO_SLOW.has(code))
      return fail(ErrorCode.TENANT_UNAVAILABLE, "This store's database did not answer in time; try again shortly", {
        retryAfterSeconds: 1,
      });
    if (!isConnectionFailure(err)) return err;
    // A timeout or a dropped connection while the server answers the others: overload, not this store's
    // database failing — 503 busy, no fence. A server that answers nobody is fenced as before.
    if (isTransientConnectionFailure(err) && this.serverOf.get(handle)?.answeredRecently()) return this.busy(handle);
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
