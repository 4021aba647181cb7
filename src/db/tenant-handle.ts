import type pg from 'pg';
import { DataTypes, Sequelize, type Options, type Transaction } from 'sequelize';
import { initTenantModels, type TenantModels } from '../models/tenant';
import { guardedStream } from '../lib/network-guard';
import { budgetedPgModule, type ClientLimits } from './budgeted-client';
import { pgPassword, pgSsl } from './tenant-pg-options';
import type { BudgetHolder, ConnectionSlots, TenantConnection } from './tenant-types';

export type { TenantConnection } from './tenant-types';

/** A handle's pool and session settings; its clients' read limit and meter too (see budgeted-client). */
export interface HandleSettings extends ClientLimits {
  poolMax: number;
  idleMs: number;
  acquireTimeoutMs: number;
  connectTimeoutMs: number;
  /** An owner's external database, reachable on public addresses only (see src/lib/network-guard.ts). */
  publicOnly?: boolean;
  /** Server-side limits of every session (ms; absent: the server's defaults): one statement, one lock wait, an idle open transaction. */
  statementTimeoutMs?: number;
  lockTimeoutMs?: number;
  idleInTransactionTimeoutMs?: number;
}

/**
 * How much longer than statement_timeout the client waits for an answer before it closes the connection
 * itself: a server that honours the setting has answered (with 57014) by then; one that ignores it has not.
 */
const QUERY_TIMEOUT_MARGIN_MS = 1000;

/** The session limits, sent in the startup packet (no extra round trip); Sequelize hands these keys to pg. */
function sessionLimits(settings: HandleSettings): Record<string, number> {
  const limits: Record<string, number> = {};
  if (settings.statementTimeoutMs) {
    limits.statement_timeout = settings.statementTimeoutMs;
    limits.query_timeout = settings.statementTimeoutMs + QUERY_TIMEOUT_MARGIN_MS;
  }
  if (settings.lockTimeoutMs) limits.lock_timeout = settings.lockTimeoutMs;
  if (settings.idleInTransactionTimeoutMs)
    limits.idle_in_transaction_session_timeout = settings.idleInTransactionTimeoutMs;
  return limits;
}

/**
 * Built-in Postgres type OIDs are the same on every server; Sequelize would look them up (a pg_type query)
 * on the first connection of every instance. We learn them once per process and hand them on.
 */
let knownTypeOids: { nameOidMap: object; enumOids: object } | undefined;

interface PgConnectionManager {
  nameOidMap: object;
  enumOids: { oids: unknown[]; arrayOids: unknown[] };
  refreshTypeParser(types: unknown): void;
  pool: SequelizePool;
  getConnection(opts: { type: 'read' | 'write' }): Promise<pg.Client>;
  releaseConnection(conn: pg.Client): void;
  validate(conn: pg.Client): boolean;
}
interface SequelizePool {
  size: number;
  available: number;
  using: number;
  waiting: number;
  _availableObjects: { resource: unknown }[];
  destroy(resource: unknown): Promise<void>;
}

/**
 * One store's database: a Sequelize instance (models built on first use) whose pool draws its
 * connections from the slots it is given (the process-wide budget). Hot reads borrow a raw pg connection
 * from that same pool.
 */
/** Demand halves every this many ms without requests. */
const DEMAND_HALF_LIFE_MS = 5000;

export class TenantHandle implements BudgetHolder {
  open = 0;
  giveBack = 0;
  lastUsed = Date.now();
  private heat = 0;
  /** Requests currently holding this handle; a retired handle closes only once this is 0. */
  leases = 0;
  readonly createdAt = Date.now();
  readonly sequelize: Sequelize;
  private modelsCache?: TenantModels;
  private closing?: Promise<void>;

  constructor(
    readonly storeId: string,
    readonly ownerId: string,
    connection: TenantConnection,
    slots: ConnectionSlots,
    settings: HandleSettings,
  ) {
    this.sequelize = new Sequelize({
      dialect: 'postgres',
      dialectModule: budgetedPgModule(slots, this, settings),
      host: connection.host,
      port: connection.port,
      database: connection.database,
      username: connection.user,
      // A function (see pgPassword), which Sequelize hands on to pg as it is.
      password: pgPassword(connection.password) as unknown as string,
      logging: false,
      // Known up front: Sequelize would otherwise ask the server on the first connection.
      databaseVersion: '15.0.0',
      // timestamptz values carry their offset, so the session time zone does not matter: skipping
      // Sequelize's SET TIME ZONE saves a round trip on every new connection.
      keepDefaultTimezone: true,
      pool: {
        max: settings.poolMax,
        min: 0,
        idle: settings.idleMs,
        evict: Math.min(1000, settings.idleMs),
        acquire: settings.acquireTimeoutMs,
      },
      dialectOptions: {
        ssl: pgSsl(connection.ssl),
        connectionTimeoutMillis: settings.connectTimeoutMs,
        application_name: 'tenantry-tenant',
        clientMinMessages: 'ignore',
        ...sessionLimits(settings),
        ...guardedStream(settings.publicOnly === true),
      },
    } as Options);
    const cm = this.connectionManager;
    if (knownTypeOids) {
      cm.nameOidMap = knownTypeOids.nameOidMap;
      cm.refreshTypeParser((DataTypes as unknown as { postgres: unknown }).postgres);
    }
    // Every connection coming back from a query or a transaction passes here (both paths release this way).
    const putBack = cm.releaseConnection.bind(cm);
    cm.releaseConnection = (conn) => {
      if (this.giveBack > 0 || !cm.validate(conn)) {
        // Cut off (its state unknown), or owed to a store waiting for its part of the budget: closed, never lent again.
        if (this.giveBack > 0) this.giveBack--;
        void cm.pool.destroy(conn);
        return;
      }
      putBack(conn);
    };
  }

  private get connectionManager(): PgConnectionManager {
    return this.sequelize.connectionManager as unknown as PgConnectionManager;
  }

  /** The tenant models, registered on this handle's Sequelize instance the first time they are needed. */
  get models(): TenantModels {
    return (this.modelsCache ??= initTenantModels(this.sequelize));
  }

  /** A request count that halves every few seconds: how busy this store is now. */
  demand(now: number): number {
    return this.heat * Math.pow(0.5, (now - this.lastUsed) / DEMAND_HALF_LIFE_MS);
  }

  private touch(): void {
    const now = Date.now();
    this.heat = this.demand(now) + 1;
    this.lastUsed = now;
  }

  /** Run one SQL statement on a pooled connection and return plain rows (the fast read path). */
  async query<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]> {
    this.touch();
    const cm = this.connectionManager;
    const conn = await cm.getConnection({ type: 'read' });
    this.learnTypeOids();
    try {
      return (await conn.query<T>(text, values)).rows;
    } finally {
      cm.releaseConnection(conn);
    }
  }

  /** A managed transaction on this tenant's database; pass `t` down to every query. */
  async transaction<T>(fn: (t: Transaction) => Promise<T>): Promise<T> {
    this.touch();
    const result = await this.sequelize.transaction(fn);
    this.learnTypeOids();
    return result;
  }

  idleConnections(): number {
    return this.connectionManager.pool.available;
  }

  closeIdle(max: number): number {
    const pool = this.connectionManager.pool;
    // destroy() drops the resource from the pool synchronously, so a second call for one is a no-op.
    const victims = pool._availableObjects.slice(0, max);
    for (const { resource } of victims) void pool.destroy(resource);
    return victims.length;
  }

  stats() {
    const pool = this.connectionManager.pool;
    return {
      open: this.open,
      inUse: pool.using,
      idle: pool.available,
      waiting: pool.waiting,
      leases: this.leases,
      lastUsed: new Date(this.lastUsed).toISOString(),
    };
  }

  /** Close once no request holds the handle any more and no query is running. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const pool = this.connectionManager.pool;
      const deadline = Date.now() + 30_000;
      while ((this.leases > 0 || pool.using > 0 || pool.waiting > 0) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await this.sequelize.close();
    })();
    return this.closing;
  }

  private learnTypeOids(): void {
    if (knownTypeOids) return;
    const cm = this.connectionManager;
    if (Object.keys(cm.nameOidMap).length > 0) knownTypeOids = { nameOidMap: cm.nameOidMap, enumOids: cm.enumOids };
  }
}
