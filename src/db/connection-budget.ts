import pg from 'pg';

/** Something that holds tenant connections and can give its idle ones back. */
export interface BudgetHolder {
  readonly storeId: string;
  /** Connections of this holder that are open now. */
  open: number;
  /** How much it is in demand now (higher = busier); the least in demand gives idle connections back first. */
  demand(now: number): number;
  /** How many of its open connections are idle (not lent out). */
  idleConnections(): number;
  /** Close up to `max` of its idle connections (in-flight ones are never touched); returns how many. */
  closeIdle(max: number): number;
}

/** Waiting for a connection slot took too long: the whole instance is busy, not any one tenant. */
export class BudgetTimeoutError extends Error {
  constructor(ms: number) {
    super(`no tenant connection slot became free within ${ms} ms`);
    this.name = 'BudgetTimeoutError';
  }
}

interface Waiter {
  holder: BudgetHolder;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * One cap on the connections all tenant pools of this process hold together. A pool that wants a new
 * connection while the cap is reached waits (bounded) while idle connections of the least recently used
 * tenants are closed to make room.
 */
export class ConnectionBudget {
  open = 0;
  peak = 0;
  waits = 0;
  timeouts = 0;
  reclaimed = 0;
  /** Total ms requests spent waiting for a slot (divide by `waits`). */
  waitedMs = 0;
  private readonly waiters: Waiter[] = [];
  private readonly holders = new Set<BudgetHolder>();
  private reclaimTimer?: NodeJS.Timeout;

  constructor(
    readonly max: number,
    private readonly waitMs: number,
  ) {}

  get waiting(): number {
    return this.waiters.length;
  }

  acquire(holder: BudgetHolder): Promise<void> {
    if (this.open < this.max && this.waiters.length === 0) {
      this.grant(holder);
      return Promise.resolve();
    }
    this.waits++;
    const since = Date.now();
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        holder,
        resolve: () => {
          this.waitedMs += Date.now() - since;
          resolve();
        },
        reject,
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          this.timeouts++;
          reject(new BudgetTimeoutError(this.waitMs));
        }, this.waitMs),
      };
      this.waiters.push(waiter);
      this.reclaim();
    });
  }

  release(holder: BudgetHolder): void {
    if (this.closing > 0) this.closing--;
    this.open--;
    holder.open--;
    if (holder.open === 0) this.holders.delete(holder);
    const next = this.waiters.shift();
    if (next) {
      clearTimeout(next.timer);
      this.grant(next.holder);
      next.resolve();
    }
  }

  /**
   * A pg module whose clients take a slot before connecting and give it back when they end; handed to
   * Sequelize as its dialect module, so every connection of a tenant's pool is counted.
   */
  pgModuleFor(holder: BudgetHolder): typeof pg {
    const budget = this;
    class BudgetedClient extends pg.Client {
      override connect(): Promise<pg.Client>;
      override connect(callback: (err: Error | null, client?: pg.Client) => void): void;
      override connect(callback?: (err: Error | null, client?: pg.Client) => void): Promise<pg.Client> | void {
        const connected = budget.acquire(holder).then(async () => {
          try {
            await super.connect();
          } catch (err) {
            budget.release(holder);
            throw err;
          }
          this.once('end', () => budget.release(holder));
          return this as pg.Client;
        });
        if (!callback) return connected;
        connected.then((client) => callback(null, client), (err: Error) => callback(err));
      }
    }
    return Object.assign(Object.create(pg) as typeof pg, { Client: BudgetedClient });
  }

  private grant(holder: BudgetHolder): void {
    this.open++;
    holder.open++;
    this.holders.add(holder);
    if (this.open > this.peak) this.peak = this.open;
  }

  /**
   * Close idle connections of the tenants least in demand until the waiters can be served. Demand is a
   * decaying request count, not recency: under a skewed load a store seen once a minute must not push
   * out a store seen every second just because it came last (plain LRU loses ~10% more hits here).
   */
  private reclaim(): void {
    if (this.waiters.length === 0) {
      clearInterval(this.reclaimTimer);
      this.reclaimTimer = undefined;
      return;
    }
    let needed = this.waiters.length - this.closing;
    if (needed > 0) {
      const now = Date.now();
      const idle = [...this.holders].filter((h) => h.idleConnections() > 0).sort((a, b) => a.demand(now) - b.demand(now));
      for (const h of idle) {
        if (needed <= 0) break;
        needed -= this.closeFrom(h, needed);
      }
    }
    // Connections in use now go back to their pools soon; look again shortly while anyone waits.
    this.reclaimTimer ??= setInterval(() => this.reclaim(), 5);
  }

  /** Connections asked to close whose slot is not back yet (so one waiter does not close two). */
  private closing = 0;

  private closeFrom(holder: BudgetHolder, max: number): number {
    const n = holder.closeIdle(max);
    this.reclaimed += n;
    this.closing += n;
    return n;
  }

  close(): void {
    clearInterval(this.reclaimTimer);
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new BudgetTimeoutError(0));
    }
  }
}
