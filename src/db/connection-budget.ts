import type { BudgetHolder, ConnectionSlots } from './tenant-types';

export type { BudgetHolder } from './tenant-types';

export interface BudgetOptions {
  /** The part of `max` (0–1] the stores of one owner may hold together; default 1 (no limit of their own). */
  ownerShare?: number;
  /** What `ownerShare` is a part of, when `max` moves (a server's lease); default `max`. */
  shareOf?: number;
  /** An owner's cap now, when it depends on more than this budget (the fleet's share); default `ownerMax`. */
  ownerCap?: (ownerId: string) => number;
  /** A request waits because every slot is taken: more may be borrowed (a server's lease). */
  onShort?: () => void;
  /** A slot came back. */
  onRelease?: () => void;
  /** While true, more slots may come in a moment: waiters do not close other stores' idle connections yet. */
  canGrow?: () => boolean;
}

/** Waiting for a connection slot took too long: the whole instance (or the store's owner) is busy. */
export class BudgetTimeoutError extends Error {
  constructor(ms: number) {
    super(`no tenant connection slot became free within ${ms} ms`);
    this.name = 'BudgetTimeoutError';
  }
}

/** What the stores of one owner hold and wait for. */
interface OwnerUsage {
  readonly ownerId: string;
  open: number;
  peak: number;
  waiting: number;
  /** Connections asked to close (idle, or given back after their query) whose slot is not back yet. */
  closing: number;
}

interface Waiter {
  holder: BudgetHolder;
  owner: OwnerUsage;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * The connections one owner's stores may hold together: `share` of the cap, rounded down, at least 1 (an
 * owner can always be served) and at most the cap. It is not raised to TENANT_POOL_MAX: with a small cap
 * the share wins, and one store of an owner then gets fewer than its pool's max.
 */
export function ownerMaxFor(max: number, share: number): number {
  return Math.min(max, Math.max(1, Math.floor(max * share + 1e-9)));
}

/**
 * One cap on the connections all tenant pools of this process hold together, and a slice of it per owner.
 * A pool that wants a new connection beyond either waits (bounded). Waiting stores are served in turn
 * (round robin over stores, not first come first served), so a store with many waiting requests cannot
 * push the others back. Meanwhile idle connections are closed to make room: for a store held back by its
 * owner's slice, only connections of that owner's stores; otherwise those of the stores least in demand.
 * A store holding more than a waiting one gives its busy connections back as their queries end.
 */
export class ConnectionBudget implements ConnectionSlots {
  open = 0;
  peak = 0;
  waits = 0;
  timeouts = 0;
  reclaimed = 0;
  /** Total ms requests spent waiting for a slot (divide by `waits`). */
  waitedMs = 0;
  /** When the server last answered (a connection opened, a query returned), for any store (ms since epoch). */
  answeredAt = 0;
  /** Connections the stores of one owner may hold together (in this budget; see BudgetOptions.ownerCap). */
  readonly ownerMax: number;
  private readonly hooks: Pick<BudgetOptions, 'ownerCap' | 'onShort' | 'onRelease' | 'canGrow'>;
  private waitingCount = 0;
  /** Stores with waiters, in serving order: a served store moves to the back (a Map keeps insertion order). */
  private readonly queues = new Map<BudgetHolder, Waiter[]>();
  private readonly owners = new Map<string, OwnerUsage>();
  private readonly holders = new Set<BudgetHolder>();
  /** Connections asked to close whose slot is not back yet (so one waiter does not close two). */
  private closing = 0;
  private reclaimTimer?: NodeJS.Timeout;

  constructor(
    /** The cap; it moves with a server's lease (resize). */
    public max: number,
    private readonly waitMs: number,
    options: BudgetOptions = {},
  ) {
    this.ownerMax = ownerMaxFor(options.shareOf ?? max, options.ownerShare ?? 1);
    const { ownerCap, onShort, onRelease, canGrow } = options;
    this.hooks = { ownerCap, onShort, onRelease, canGrow };
  }

  /** What the stores of this owner may hold together now. */
  private capOf(owner: OwnerUsage): number {
    return this.hooks.ownerCap ? this.hooks.ownerCap(owner.ownerId) : this.ownerMax;
  }

  /**
   * A new cap (the lease grew or shrank). Above what is open, waiters are served. Below it, idle connections
   * are closed (those of the stores least in demand first) and, if that is not enough, busy ones are asked
   * back as their queries end; nothing is granted until the open connections are under the cap again.
   */
  resize(max: number): void {
    this.max = Math.max(0, max);
    if (this.open < this.max) {
      this.dispatch();
      return;
    }
    let excess = this.open - this.max - this.closing - [...this.holders].reduce((n, h) => n + h.giveBack, 0);
    if (excess <= 0) return;
    const now = Date.now();
    const idle = [...this.holders].filter((h) => h.idleConnections() > 0).sort((a, b) => a.demand(now) - b.demand(now));
    for (const h of idle) {
      if (excess <= 0) break;
      const n = h.closeIdle(excess);
      this.closing += n;
      this.usageOf(h.ownerId).closing += n;
      excess -= n;
    }
    // Busy connections: the stores holding the most give back first, as their queries end.
    const busy = [...this.holders].sort((a, b) => b.open - b.giveBack - (a.open - a.giveBack));
    for (const h of busy) {
      if (excess <= 0) break;
      const n = Math.min(excess, h.open - h.giveBack - h.idleConnections());
      if (n <= 0) continue;
      h.giveBack += n;
      excess -= n;
    }
  }

  /** Open connections per owner (reported to the other processes of the fleet). */
  ownerOpen(): [string, number][] {
    return [...this.owners.values()].filter((o) => o.open > 0).map((o) => [o.ownerId, o.open]);
  }

  get waiting(): number {
    return this.waitingCount;
  }

  answered(): void {
    this.answeredAt = Date.now();
  }

  acquire(holder: BudgetHolder): Promise<void> {
    const owner = this.usageOf(holder.ownerId);
    // Below both caps nobody can be waiting for this slot: waiters that could take it were served already.
    if (this.open < this.max && owner.open < this.capOf(owner)) {
      this.grant(holder, owner);
      return Promise.resolve();
    }
    if (this.open >= this.max) this.hooks.onShort?.();
    this.waits++;
    const since = Date.now();
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        holder,
        owner,
        resolve: () => {
          this.waitedMs += Date.now() - since;
          resolve();
        },
        reject,
        timer: setTimeout(() => {
          this.unqueue(waiter);
          this.timeouts++;
          reject(new BudgetTimeoutError(this.waitMs));
        }, this.waitMs),
      };
      const queue = this.queues.get(holder);
      if (queue) queue.push(waiter);
      else this.queues.set(holder, [waiter]);
      this.waitingCount++;
      owner.waiting++;
      this.reclaim();
    });
  }

  release(holder: BudgetHolder): void {
    const owner = this.usageOf(holder.ownerId);
    if (this.closing > 0) this.closing--;
    if (owner.closing > 0) owner.closing--;
    this.open--;
    owner.open--;
    holder.open--;
    if (holder.open === 0) this.holders.delete(holder);
    this.dispatch();
    this.forgetIfUnused(owner);
    this.hooks.onRelease?.();
  }

  /** What each owner with open or wanted connections holds now (admin views). */
  ownerUsage(): { ownerId: string; open: number; peak: number; waiting: number }[] {
    return [...this.owners.values()].map(({ ownerId, open, peak, waiting }) => ({ ownerId, open, peak, waiting }));
  }

  private usageOf(ownerId: string): OwnerUsage {
    let owner = this.owners.get(ownerId);
    if (!owner) {
      owner = { ownerId, open: 0, peak: 0, waiting: 0, closing: 0 };
      this.owners.set(ownerId, owner);
    }
    return owner;
  }

  private forgetIfUnused(owner: OwnerUsage): void {
    if (owner.open === 0 && owner.waiting === 0) this.owners.delete(owner.ownerId);
  }

  private grant(holder: BudgetHolder, owner: OwnerUsage): void {
    this.open++;
    owner.open++;
    holder.open++;
    this.holders.add(holder);
    if (this.open > this.peak) this.peak = this.open;
    if (owner.open > owner.peak) owner.peak = owner.open;
  }

  /** Hand free slots to waiting stores in turn, skipping those whose owner is at its share. */
  private dispatch(): void {
    while (this.open < this.max && this.waitingCount > 0) {
      const next = this.nextServable();
      if (!next) return;
      clearTimeout(next.timer);
      this.grant(next.holder, next.owner);
      next.resolve();
    }
  }

  private nextServable(): Waiter | undefined {
    for (const [holder, queue] of this.queues) {
      if (queue[0].owner.open >= this.capOf(queue[0].owner)) continue;
      const waiter = queue.shift()!;
      // To the back of the line: the other waiting stores come first next time.
      this.queues.delete(holder);
      if (queue.length > 0) this.queues.set(holder, queue);
      this.waitingCount--;
      waiter.owner.waiting--;
      return waiter;
    }
    return undefined;
  }

  private unqueue(waiter: Waiter): void {
    const queue = this.queues.get(waiter.holder);
    const i = queue ? queue.indexOf(waiter) : -1;
    if (!queue || i < 0) return;
    queue.splice(i, 1);
    if (queue.length === 0) this.queues.delete(waiter.holder);
    this.waitingCount--;
    waiter.owner.waiting--;
    this.forgetIfUnused(waiter.owner);
  }

  /**
   * Make room for the waiters. Idle connections go first, those of the stores least in demand first:
   * demand is a decaying request count, not recency, so under a skewed load a store seen once a minute
   * does not push out a store seen every second just because it came last (plain LRU loses ~10% more hits
   * here). A store held back by its owner's share is served only from that owner's own connections.
   */
  private reclaim(): void {
    if (this.waitingCount === 0) {
      clearInterval(this.reclaimTimer);
      this.reclaimTimer = undefined;
      for (const h of this.holders) h.giveBack = 0;
      return;
    }
    const atShare = new Map<OwnerUsage, BudgetHolder[]>();
    const servable: BudgetHolder[] = [];
    let servableWaiters = 0;
    for (const [holder, queue] of this.queues) {
      const owner = queue[0].owner;
      if (owner.open >= this.capOf(owner)) {
        const list = atShare.get(owner);
        if (list) list.push(holder);
        else atShare.set(owner, [holder]);
      } else {
        servable.push(holder);
        servableWaiters += queue.length;
      }
    }
    for (const [owner, waiting] of atShare) {
      const own = [...this.holders].filter((h) => h.ownerId === owner.ownerId);
      this.makeRoom(owner.waiting - owner.closing, own, waiting);
    }
    // Servable waiters exist only while every slot is taken (dispatch serves them otherwise). While the cap
    // may grow in a moment (a lease being borrowed), warm connections of other stores are left alone.
    if (servableWaiters > 0 && !this.hooks.canGrow?.())
      this.makeRoom(servableWaiters - this.closing, [...this.holders], servable);
    // Connections in use now go back to their pools soon; look again shortly while anyone waits.
    this.reclaimTimer ??= setInterval(() => this.reclaim(), 5);
  }

  private makeRoom(needed: number, candidates: BudgetHolder[], waiting: BudgetHolder[]): void {
    if (needed <= 0) return;
    const now = Date.now();
    const idle = candidates.filter((h) => h.idleConnections() > 0).sort((a, b) => a.demand(now) - b.demand(now));
    let closed = 0;
    for (const h of idle) {
      if (closed >= needed) break;
      const n = h.closeIdle(needed - closed);
      this.reclaimed += n;
      this.closing += n;
      this.usageOf(h.ownerId).closing += n;
      closed += n;
    }
    // Busy connections asked back earlier are not needed for the room just made.
    let cancel = closed;
    for (const h of candidates) {
      if (cancel <= 0) break;
      const n = Math.min(h.giveBack, cancel);
      h.giveBack -= n;
      cancel -= n;
    }
    if (closed >= needed) return;
    // Nothing (more) idle: the store holding the most gives one busy connection back when its query ends,
    // if it holds at least two more than a waiting store (so that the two do not hand one connection to and
    // fro). One at a time: the next look, 5 ms on, asks again once that one is back.
    const fewest = Math.min(...waiting.map((h) => h.open));
    let richest: BudgetHolder | undefined;
    for (const h of candidates) {
      if (h.giveBack > 0) return;
      if (h.open > fewest + 1 && (!richest || h.open > richest.open)) richest = h;
    }
    if (richest) richest.giveBack++;
  }

  close(): void {
    clearInterval(this.reclaimTimer);
    for (const queue of this.queues.values()) {
      for (const w of queue) {
        clearTimeout(w.timer);
        w.reject(new BudgetTimeoutError(0));
      }
    }
    this.queues.clear();
    this.waitingCount = 0;
  }
}
