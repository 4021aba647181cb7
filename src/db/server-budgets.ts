import { ConnectionBudget, ownerMaxFor } from './connection-budget';
import { withClient } from './pg-client';
import { readServerSettings, serverBudget, type ServerLease, type ServerLeases } from './server-leases';

/** A server whose settings we read (a managed tenant server: TENANT_SERVERS, or the master's). */
export interface ManagedServer {
  key: string;
  adminUrl: string;
}

export interface ServerBudgetsOptions {
  /** Most connections this process opens on one server (TENANT_CONNECTIONS_MAX). */
  connectionsMax: number;
  acquireTimeoutMs: number;
  /** The part (0–1] of a budget the stores of one owner may hold together. */
  ownerShare?: number;
  /** Managed servers: their budget is read from their settings. Any other server is an owner's (external). */
  managed: ManagedServer[];
  /** The master's server: its budget also leaves MASTER_POOL_MAX per process out. */
  masterKey?: string;
  masterPoolMax: number;
  /** Kept out of a managed server's budget (TENANT_SERVER_HEADROOM). */
  headroom: number;
  /** Budget of an external server, for every process together (EXTERNAL_SERVER_CONNECTIONS). */
  externalConnections: number;
  refreshMs: number;
}

/**
 * How recently a server must have answered (any store's connection or query) for a timeout or a dropped
 * connection of one store to be taken as overload rather than as that store's database failing (ms).
 */
export const SERVER_ANSWERED_WITHIN_MS = 5000;

/** How a server's key is spelled: `host:port`, the host in lower case. */
export const serverKeyOf = (c: { host: string; port: number }): string => `${c.host.toLowerCase()}:${c.port}`;

/** One server: its local budget, its lease (none without Redis), what it refused. */
export class ServerBudget {
  /** Sessions the server refused (53300) while we connected. */
  serverRefusals = 0;
  /** Requests answered 503 busy for this server (no slot in time, or the server stayed full). */
  busyRefusals = 0;
  readonly budget: ConnectionBudget;

  constructor(
    readonly key: string,
    readonly external: boolean,
    options: ServerBudgetsOptions,
    readonly lease: ServerLease | undefined,
  ) {
    const localOwnerMax = ownerMaxFor(options.connectionsMax, options.ownerShare ?? 1);
    this.budget = new ConnectionBudget(lease ? 0 : options.connectionsMax, options.acquireTimeoutMs, {
      ownerShare: options.ownerShare,
      shareOf: options.connectionsMax,
      // Fleet-wide: the owner's part of the server's budget minus what the other processes hold for it (as of
      // their last heartbeat); never below 1, so every process can serve every owner. Not on an external
      // server: its small budget is there for the owner whose server it is.
      ownerCap:
        lease && !external
          ? (ownerId) => {
              if (lease.budget === 0) return localOwnerMax;
              const fleet = ownerMaxFor(lease.budget, options.ownerShare ?? 1);
              return Math.min(localOwnerMax, Math.max(1, fleet - (lease.othersPerOwner.get(ownerId) ?? 0)));
            }
          : undefined,
      onShort: lease ? () => lease.wantMore() : undefined,
      onRelease: lease ? () => lease.released() : undefined,
      canGrow: lease ? () => lease.borrowing : undefined,
    });
    if (lease) {
      const budget = this.budget;
      lease.attach(
        {
          get open() {
            return budget.open;
          },
          get waiting() {
            return budget.waiting;
          },
          perOwner: () => budget.ownerOpen(),
        },
        (allowance) => budget.resize(Math.min(options.connectionsMax, allowance)),
      );
      // Borrow ahead of the first request's wait.
      void lease.sync();
    }
  }

  /** The server answered someone (a connection opened, a query returned) a moment ago: it is alive. */
  answeredRecently(now = Date.now()): boolean {
    return now - this.budget.answeredAt < SERVER_ANSWERED_WITHIN_MS;
  }

  stats() {
    const b = this.budget;
    return {
      key: this.key,
      external: this.external,
      ...(this.lease?.stats() ?? {
        budget: b.max,
        mode: 'local' as const,
        leased: b.max,
        allowance: b.max,
        leasedTotal: b.max,
        instances: 1,
        demandTotal: b.open + b.waiting,
        borrowed: 0,
        returned: 0,
        syncFailures: 0,
      }),
      max: b.max,
      open: b.open,
      peak: b.peak,
      waiting: b.waiting,
      waits: b.waits,
      waitTimeouts: b.timeouts,
      serverRefusals: this.serverRefusals,
      busyRefusals: this.busyRefusals,
    };
  }
}

/** The local budgets of the servers this process connects to, one per `host:port`, each sized by its lease. */
export class ServerBudgets {
  private readonly servers = new Map<string, ServerBudget>();
  private readonly managed: Map<string, ManagedServer>;

  constructor(
    private readonly options: ServerBudgetsOptions,
    private readonly leases?: ServerLeases,
  ) {
    this.managed = new Map(options.managed.map((s) => [s.key.toLowerCase(), s]));
  }

  /** The budget of the server holding this database (made on first use). */
  forServer(connection: { host: string; port: number }): ServerBudget {
    const key = serverKeyOf(connection);
    let server = this.servers.get(key);
    if (!server) {
      const managed = this.managed.get(key);
      const lease = this.leases?.lease(key, {
        localMax: this.options.connectionsMax,
        refreshMs: this.options.refreshMs,
        unknownBudget: this.options.externalConnections,
        budget: managed ? () => this.readBudget(managed) : async () => this.options.externalConnections,
      });
      server = new ServerBudget(key, !managed, this.options, lease);
      this.servers.set(key, server);
    }
    return server;
  }

  get(key: string): ServerBudget | undefined {
    return this.servers.get(key);
  }

  all(): ServerBudget[] {
    return [...this.servers.values()];
  }

  private async readBudget(server: ManagedServer): Promise<number> {
    const settings = await withClient(
      { connectionString: server.adminUrl, connectionTimeoutMillis: 1000, application_name: 'tenantry-budget' },
      readServerSettings,
    );
    const lease = this.leases?.get(server.key.toLowerCase());
    // The master's pool is per process: as many of them as there are processes.
    const master =
      server.key.toLowerCase() === this.options.masterKey?.toLowerCase()
        ? this.options.masterPoolMax * Math.max(1, lease?.instances ?? 1)
        : 0;
    return serverBudget(settings, this.options.headroom + master);
  }

  close(): void {
    for (const s of this.servers.values()) s.budget.close();
  }
}
