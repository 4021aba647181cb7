/**
 * The types the tenant-connection modules share, at the bottom of src/db so that imports point one way:
 * connection-manager → tenant-context → tenant-handle → budgeted-client / tenant-pg-options → here, and
 * connection-manager → connection-budget → here (a handle knows its slots only as ConnectionSlots).
 */

/** How to reach one tenant database (decrypted from store_databases.credentials). */
export interface TenantConnection {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
  /** TLS: true verifies the server's certificate and name (verify-full); `rejectUnauthorized: false` does not (require). */
  ssl?: boolean | { rejectUnauthorized: false };
}

/** Bytes one request has read from its store's database so far (see TENANT_MAX_READ_BYTES). */
export interface ReadMeter {
  bytes: number;
}

/** Something that holds tenant connections and can give its idle ones back. */
export interface BudgetHolder {
  readonly storeId: string;
  /** The store's owner: the stores of one owner share one slice of the budget. */
  readonly ownerId: string;
  /** Connections of this holder that are open now. */
  open: number;
  /**
   * Connections the budget wants back from this holder although they are busy: the next ones whose query
   * ends are closed instead of going back to its pool (another store is waiting for its fair part).
   */
  giveBack: number;
  /** How much it is in demand now (higher = busier); the least in demand gives idle connections back first. */
  demand(now: number): number;
  /** How many of its open connections are idle (not lent out). */
  idleConnections(): number;
  /** Close up to `max` of its idle connections (in-flight ones are never touched); returns how many. */
  closeIdle(max: number): number;
}

/**
 * Where a tenant connection gets its slot: taken before the connection opens, given back when it ends.
 * A slow acquire rejects with BudgetTimeoutError (overload, never the store's fault). Today one
 * ConnectionBudget per instance is the only implementation; the ConnectionManager picks the slots of each
 * handle (ConnectionManager.slotsFor), so a budget per Postgres server can be put behind this.
 */
export interface ConnectionSlots {
  acquire(holder: BudgetHolder): Promise<void>;
  release(holder: BudgetHolder): void;
  /** The server answered: a connection opened, or a query returned (a sign of life; see ServerBudget.answeredRecently). */
  answered?(): void;
}
