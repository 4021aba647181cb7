import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { logger } from '../lib/logger';

/**
 * One connection budget per Postgres server, shared by every API instance and worker through Redis.
 *
 * Each process holds a lease on each server it talks to: a number of connections it may open there. Leases
 * move in blocks (no Redis round trip per query or per connection): a process borrows a block when a request
 * waits and its lease is used up, renews its liveness by heartbeat, gives back what it has not needed for a
 * while, and gives back its unused part at once when other processes are short. One Lua script does all of it
 * atomically, so the leases of a server never add up to more than its budget. A process that stops
 * heart-beating is forgotten (its leases with it) by the next script call after LEASE_TTL_MS. When Redis has
 * lost the leases (restarted empty) while processes still hold connections, nobody is granted more than it held
 * until every process has had a TTL to register its open connections (see recoverUntil in the script).
 *
 * Keys, per server (`{host:port}` is a Redis Cluster hash tag: a server's keys stay on one node):
 *   <prefix>:conn:{host:port}:leases  HASH instance → connections leased
 *   <prefix>:conn:{host:port}:alive   ZSET instance → expiry (ms, Redis clock)
 *   <prefix>:conn:{host:port}:demand  HASH instance → connections wanted (open + waiting, peak of the last while)
 *   <prefix>:conn:{host:port}:owners  HASH instance → "ownerId=open,…" (its open connections per store owner)
 *   <prefix>:conn:{host:port}:info    HASH budget, at, recoverUntil
 *
 * Without Redis a process falls back to a static share: the last known budget divided by the last known number
 * of processes (at least 1), and takes up leasing again when Redis answers.
 */

const SYNC_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local used, wanted, desired, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, keyTtl, owners, held = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local reaped = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[2], id)
  reaped = reaped + 1
end
-- A process Redis does not know (it restarted empty, or forgot the process) that holds connections: others may
-- be in the same case, their connections open but not in the leases yet. Until each has had a TTL to say so,
-- nobody is granted more than it held before (its lease, or its static share) or has open.
local recoverUntil = tonumber(redis.call('HGET', KEYS[5], 'recoverUntil') or 0)
if not redis.call('ZSCORE', KEYS[2], me) and (held > 0 or used > 0) then
  recoverUntil = math.max(recoverUntil, now + ttl)
  redis.call('HSET', KEYS[5], 'recoverUntil', recoverUntil)
end
redis.call('ZADD', KEYS[2], now + ttl, me)
redis.call('HSET', KEYS[3], me, wanted)
if owners == '' then redis.call('HDEL', KEYS[4], me) else redis.call('HSET', KEYS[4], me, owners) end
local leases = {}
local flat = redis.call('HGETALL', KEYS[1])
local mine, others = 0, 0
for i = 1, #flat, 2 do
  local n = tonumber(flat[i + 1])
  leases[flat[i]] = n
  if flat[i] == me then mine = n else others = others + n end
end
local total, short, instances = 0, 0, 0
flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local w = tonumber(flat[i + 1])
  total = total + w
  instances = instances + 1
  if flat[i] ~= me then short = short + math.max(0, w - (leases[flat[i]] or 0)) end
end
-- What this instance may hold: what it wants, unless the server cannot give everyone what they want and
-- another instance is short; then its part of the budget, weighted by what each wants.
local cap = desired
if total > budget and short > 0 then
  local share = math.floor(budget * wanted / total)
  if wanted > 0 and share < 1 then share = 1 end
  if share < cap then cap = share end
end
if now < recoverUntil then cap = math.min(cap, math.max(used, held)) end
local free = budget - others - mine
local lease = mine
if cap > mine then
  if free > 0 then lease = mine + math.min(cap - mine, free) end
elseif cap < mine then
  lease = cap
end
-- The budget shrank below what is leased: give back down to what is left for this one.
if others + lease > budget then lease = math.min(lease, math.max(0, budget - others)) end
-- Connections open now are real whatever the arithmetic says (after a fall-back to the static share).
if lease < used then lease = used end
if lease > 0 then redis.call('HSET', KEYS[1], me, lease) else redis.call('HDEL', KEYS[1], me) end
redis.call('HSET', KEYS[5], 'budget', budget, 'at', now)
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], keyTtl) end
-- Open connections of the other instances per owner, summed.
local perOwner = {}
flat = redis.call('HGETALL', KEYS[4])
for i = 1, #flat, 2 do
  if flat[i] ~= me then
    for owner, n in string.gmatch(flat[i + 1], '([^,=]+)=(%d+)') do perOwner[owner] = (perOwner[owner] or 0) + tonumber(n) end
  end
end
local ownersOut = {}
for owner, n in pairs(perOwner) do
  ownersOut[#ownersOut + 1] = owner
  ownersOut[#ownersOut + 1] = n
end
return {lease, cap, instances, total, others + lease, reaped, ownersOut}
`;

const LEAVE_SCRIPT = `
for i = 1, 4 do
  if i == 2 then redis.call('ZREM', KEYS[i], ARGV[1]) else redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 1
`;

type SyncReply = [number, number, number, number, number, number, (string | number)[]];

interface LeaseRedis extends Redis {
  leaseSync(
    k1: string,
    k2: string,
    k3: string,
    k4: string,
    k5: string,
    ...args: (string | number)[]
  ): Promise<SyncReply>;
  leaseLeave(k1: string, k2: string, k3: string, k4: string, instance: string): Promise<number>;
}

export interface LeaseOptions {
  /** Prefix of the Redis keys (the deployment's REDIS_PREFIX). */
  prefix: string;
  /** This process's id among the instances; default host:pid:random. */
  instanceId?: string;
  /** How often a process renews its leases (ms). */
  heartbeatMs?: number;
  /** A process silent for this long is gone: its leases return to the others (ms). */
  ttlMs?: number;
  /** Connections borrowed at a time. */
  blockSize?: number;
  /** Longest wait for one Redis call before falling back to the static share (ms). */
  callTimeoutMs?: number;
  /** Connections not wanted for this long are given back (ms). */
  returnAfterMs?: number;
  /** While requests wait and the lease is short, how often to ask again (ms). */
  retryMs?: number;
}

/** What one server's local budget tells its lease (read at each sync). */
export interface LeaseUsage {
  /** Connections open now. */
  open: number;
  /** Requests waiting for a connection now. */
  waiting: number;
  /** Open connections per store owner (for the fleet-wide owner share). */
  perOwner(): Iterable<[string, number]>;
}

export interface ServerLeaseOptions {
  /** The server's budget: connections all processes may hold together there. Re-read every `refreshMs`. */
  budget: () => Promise<number>;
  refreshMs?: number;
  /** Most connections this process may hold on the server whatever the budget (TENANT_CONNECTIONS_MAX). */
  localMax: number;
  /** The budget assumed until a reading succeeds (a server whose settings cannot be read). */
  unknownBudget?: number;
}

const DEFAULTS = {
  heartbeatMs: 1000,
  ttlMs: 3000,
  blockSize: 4,
  callTimeoutMs: 250,
  returnAfterMs: 5000,
  retryMs: 100,
};

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Every server lease of one process, over one Redis connection of their own, renewed by one heartbeat. */
export class ServerLeases {
  readonly instanceId: string;
  readonly options: Required<Omit<LeaseOptions, 'instanceId'>>;
  private readonly redis: LeaseRedis;
  private readonly leases = new Map<string, ServerLease>();
  private timer?: NodeJS.Timeout;
  private closed = false;

  /**
   * `redisUrl`: its own connection, with no offline queue and a command timeout, so that a call made while
   * Redis is away fails at once (the static share applies) instead of waiting for the reconnection.
   */
  constructor(redisUrl: string, options: LeaseOptions) {
    this.instanceId = options.instanceId ?? `${os.hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
    this.options = { ...DEFAULTS, ...options } as ServerLeases['options'];
    const redis = new Redis(redisUrl, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: this.options.callTimeoutMs,
      connectTimeout: 1000,
      // close() while Redis is away: ioredis then waits this long (a timer holding the process) for a socket
      // that has already closed. Nothing is left to say over it: the leases were given back, or cannot be.
      disconnectTimeout: this.options.callTimeoutMs,
      connectionName: 'tenantry-leases',
      // Reconnect for ever, at most a second apart: leases come back soon after Redis does.
      retryStrategy: (attempt) => Math.min(attempt * 100, 1000),
    });
    redis.defineCommand('leaseSync', { numberOfKeys: 5, lua: SYNC_SCRIPT });
    redis.defineCommand('leaseLeave', { numberOfKeys: 4, lua: LEAVE_SCRIPT });
    let down = false;
    redis.on('error', (err: Error) => {
      if (!down)
        logger.warn({ err: err.message }, 'connection leases: Redis unreachable; static shares until it answers');
      down = true;
    });
    redis.on('ready', () => {
      if (down) logger.info('connection leases: Redis answers again; leasing resumes');
      down = false;
    });
    this.redis = redis as LeaseRedis;
    void redis.connect().catch(() => {});
    this.timer = setInterval(() => this.beat(), this.options.heartbeatMs);
    this.timer.unref();
  }

  /** The lease of one server (made on first use). */
  lease(key: string, options: ServerLeaseOptions): ServerLease {
    let lease = this.leases.get(key);
    if (!lease) {
      lease = new ServerLease(key, this, options);
      this.leases.set(key, lease);
    }
    return lease;
  }

  get(key: string): ServerLease | undefined {
    return this.leases.get(key);
  }

  all(): ServerLease[] {
    return [...this.leases.values()];
  }

  /** Run one lease script with the call timeout (a rejected promise when Redis is away or slow). @internal */
  call<T>(fn: (redis: LeaseRedis) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error('leases closed'));
    const redis = this.redis;
    // Still connecting (the first calls after start, or a reconnection under way): wait for it, within the same bound.
    const ready =
      redis.status === 'ready'
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
            const onReady = () => resolve();
            redis.once('ready', onReady);
            setTimeout(() => {
              redis.off('ready', onReady);
              reject(new Error(`Redis is ${redis.status}`));
            }, this.options.callTimeoutMs).unref();
          });
    // Not queued while Redis is away (no offline queue): a call either goes now or fails now.
    return withTimeout(
      ready.then(() => fn(redis)),
      this.options.callTimeoutMs + 50,
    );
  }

  /** The Redis keys of one server's leases. @internal */
  keys(server: string): [string, string, string, string, string] {
    const base = `${this.options.prefix}:conn:{${server}}`;
    return [`${base}:leases`, `${base}:alive`, `${base}:demand`, `${base}:owners`, `${base}:info`];
  }

  /**
   * Renew every lease that holds or wants something. A server this process neither holds nor uses costs no
   * Redis call (there may be many: one per owner's external server); it is asked again at its next use.
   */
  private beat(): void {
    for (const lease of this.leases.values()) if (!lease.idle) void lease.sync();
  }

  /** Give every lease back (a clean stop: the others need not wait for the TTL) and close the connection. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const lease of this.leases.values()) lease.stop();
    await Promise.all(
      [...this.leases.keys()].map((key) => {
        const [k1, k2, k3, k4] = this.keys(key);
        return this.call((r) => r.leaseLeave(k1, k2, k3, k4, this.instanceId)).catch(() => {});
      }),
    );
    this.closed = true;
    await this.redis.quit().catch(() => {});
    this.redis.disconnect();
  }
}

/**
 * This process's lease on one server. `allowance` is how many connections it may hold there now: the lease
 * (Redis answers), or the static share (it does not). The local budget reads it and is told when it changes.
 */
export class ServerLease {
  /** The server's budget as last read (connections for every process together). */
  budget = 0;
  /** Connections leased to this process (as Redis last said). */
  leased = 0;
  /** What this process may hold now; below `leased` while it gives back to others. */
  allowance = 0;
  /** Leases of every process together, and how many processes hold or want some (as Redis last said). */
  leasedTotal = 0;
  instances = 1;
  /** Total connections every process wants (open + waiting). */
  demandTotal = 0;
  mode: 'leased' | 'static' = 'leased';
  /** Other processes' open connections per owner (as Redis last said). */
  othersPerOwner = new Map<string, number>();
  readonly counters = { syncs: 0, syncFailures: 0, borrowed: 0, returned: 0, reaped: 0, staticSince: 0 };
  private usage?: LeaseUsage;
  private listener?: (allowance: number) => void;
  private budgetAt = 0;
  private budgetKnown = false;
  private budgetReading?: Promise<void>;
  private syncing?: Promise<void>;
  private again = false;
  private soonTimer?: NodeJS.Timeout;
  /** When the last sync started. */
  private lastSyncAt = 0;
  /** Peak demand in the current and the previous return window: what was wanted over the last while. */
  private peak = { now: 0, before: 0, since: Date.now() };
  private stopped = false;

  constructor(
    readonly key: string,
    private readonly fleet: ServerLeases,
    private readonly options: ServerLeaseOptions,
  ) {}

  /** The local budget of this server: what it uses, and what to call when the allowance changes. */
  attach(usage: LeaseUsage, onAllowance: (allowance: number) => void): void {
    this.usage = usage;
    this.listener = onAllowance;
  }

  /** Nothing leased, open or waiting, and nothing held in the Redis view either: no heartbeat needed. */
  get idle(): boolean {
    return (
      this.leased === 0 && this.mode === 'leased' && (this.usage?.open ?? 0) === 0 && (this.usage?.waiting ?? 0) === 0
    );
  }

  /** A call to Redis is under way: the allowance may grow in a moment (the local budget waits for it before closing others' idle connections). */
  get borrowing(): boolean {
    return this.syncing !== undefined;
  }

  /** A request waits and the allowance is used up: borrow now rather than at the next heartbeat. */
  wantMore(): void {
    this.soon();
  }

  /** Connections were closed: if the lease is above what is wanted, give back soon. */
  released(): void {
    if (this.leased > this.allowance && this.mode === 'leased') this.soon();
  }

  /**
   * Sync now, or, if one started less than `retryMs` ago, once that long after it: however many requests
   * wait, a process asks Redis about one server at most every `retryMs` (besides its heartbeat).
   */
  private soon(): void {
    const wait = this.lastSyncAt + this.fleet.options.retryMs - Date.now();
    if (wait <= 0 && !this.syncing) {
      void this.sync();
      return;
    }
    if (this.soonTimer || this.stopped) return;
    this.soonTimer = setTimeout(
      () => {
        this.soonTimer = undefined;
        void this.sync();
      },
      Math.max(1, wait),
    );
    this.soonTimer.unref();
  }

  /** Ask Redis: renew, borrow, give back. Concurrent calls share one round trip (one more follows if asked meanwhile). */
  sync(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    this.syncing = this.syncOnce().finally(() => {
      this.syncing = undefined;
      if (this.again && !this.stopped) {
        this.again = false;
        void this.sync();
      }
    });
    return this.syncing;
  }

  /** Wanted now, and the peak of the last return window (so a short lull gives nothing back). */
  private wanted(): number {
    const now = Date.now();
    const current = this.usage ? this.usage.open + this.usage.waiting : 0;
    const window = this.fleet.options.returnAfterMs;
    if (now - this.peak.since >= window) {
      this.peak = { now: 0, before: now - this.peak.since >= 2 * window ? 0 : this.peak.now, since: now };
    }
    this.peak.now = Math.max(this.peak.now, current);
    return Math.max(this.peak.now, this.peak.before, current);
  }

  private async syncOnce(): Promise<void> {
    this.lastSyncAt = Date.now();
    this.counters.syncs++;
    await this.readBudget();
    const block = this.fleet.options.blockSize;
    const wanted = Math.min(this.wanted(), this.options.localMax);
    // Borrow in whole blocks, never more than this process may hold or the server has.
    const desired = Math.min(this.options.localMax, this.budget, Math.ceil(wanted / block) * block);
    const used = this.usage?.open ?? 0;
    const owners = this.usage
      ? [...this.usage.perOwner()]
          .filter(([, n]) => n > 0)
          .map(([o, n]) => `${o}=${n}`)
          .join(',')
      : '';
    let reply: SyncReply;
    try {
      reply = await this.fleet.call((r) =>
        r.leaseSync(
          ...this.fleet.keys(this.key),
          this.fleet.instanceId,
          used,
          wanted,
          desired,
          this.budget,
          this.fleet.options.ttlMs,
          Math.max(60_000, this.fleet.options.ttlMs * 10),
          owners,
          // What this process may hold as it stands (a stale lease does not count once it fell back).
          this.mode === 'static' ? this.allowance : this.leased,
        ),
      );
    } catch {
      this.counters.syncFailures++;
      this.fallBack();
      return;
    }
    if (this.stopped) return;
    const [lease, cap, instances, demandTotal, leasedTotal, reaped, perOwner] = reply;
    if (this.mode === 'static') logger.info({ server: this.key, lease }, 'connection lease re-established');
    this.mode = 'leased';
    if (lease > this.leased) this.counters.borrowed += lease - this.leased;
    else this.counters.returned += this.leased - lease;
    this.counters.reaped += reaped;
    this.leased = lease;
    this.instances = Math.max(1, instances);
    this.demandTotal = demandTotal;
    this.leasedTotal = leasedTotal;
    this.othersPerOwner = new Map();
    for (let i = 0; i + 1 < perOwner.length; i += 2)
      this.othersPerOwner.set(String(perOwner[i]), Number(perOwner[i + 1]));
    this.setAllowance(Math.min(lease, cap));
    this.scheduleRetry();
  }

  /**
   * Redis did not answer: a conservative share of the last known budget, whatever the lease said. Shrinking to
   * it is at once; growing to it waits a lease's TTL: until then another process may still hold more than its
   * share (it has not noticed yet, or its connections are still busy), and the shares together would go over
   * the budget. Until then this process keeps what it held (at least one connection, to keep serving).
   */
  private fallBack(): void {
    if (this.mode === 'leased') {
      this.counters.staticSince = Date.now();
      logger.warn({ server: this.key }, 'connection lease not renewable (Redis); using a static share');
    }
    this.mode = 'static';
    const settled = Date.now() - this.counters.staticSince >= this.fleet.options.ttlMs;
    this.setAllowance(settled ? this.staticShare() : Math.min(this.staticShare(), Math.max(1, this.allowance)));
  }

  /** The last known budget divided by the last known number of processes (at least 1, at most localMax). */
  staticShare(): number {
    return Math.min(this.options.localMax, Math.max(1, Math.floor(this.budget / Math.max(1, this.instances))));
  }

  private setAllowance(allowance: number): void {
    if (allowance === this.allowance) return;
    this.allowance = allowance;
    this.listener?.(allowance);
  }

  /** Requests still wait and the lease could grow: ask again shortly (only under pressure). */
  private scheduleRetry(): void {
    if (!this.usage || this.usage.waiting === 0) return;
    if (this.allowance >= Math.min(this.options.localMax, this.budget)) return;
    this.soon();
  }

  private async readBudget(): Promise<void> {
    const due = Date.now() - this.budgetAt >= (this.options.refreshMs ?? 60_000);
    if (!due) return;
    this.budgetReading ??= this.options
      .budget()
      .then((b) => {
        if (b !== this.budget && this.budgetKnown)
          logger.info({ server: this.key, budget: b, was: this.budget }, 'connection budget of a server changed');
        this.budget = Math.max(0, b);
      })
      .then(
        () => {
          this.budgetAt = Date.now();
          this.budgetKnown = true;
        },
        (err: Error) => {
          // Keep the last reading (or the assumed one); never read yet: again in a second, else at the next refresh.
          logger.warn(
            { server: this.key, err: err.message },
            'could not read the connection budget of a server; keeping the last one',
          );
          if (!this.budgetKnown) this.budget = this.options.unknownBudget ?? 1;
          this.budgetAt = this.budgetKnown ? Date.now() : Date.now() - (this.options.refreshMs ?? 60_000) + 1000;
        },
      )
      .finally(() => {
        this.budgetReading = undefined;
      });
    await this.budgetReading;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.soonTimer);
  }

  stats() {
    return {
      budget: this.budget,
      mode: this.mode,
      leased: this.leased,
      allowance: this.allowance,
      leasedTotal: this.leasedTotal,
      instances: this.instances,
      demandTotal: this.demandTotal,
      borrowed: this.counters.borrowed,
      returned: this.counters.returned,
      syncFailures: this.counters.syncFailures,
    };
  }
}

/** What the server's settings leave for us (see serverBudget). */
export interface ServerSettings {
  maxConnections: number;
  superuserReserved: number;
  /** PG16+ `reserved_connections` (0 before). */
  reserved: number;
}

/** Connections Tenantry may spread over its processes on a server: its slots minus the reserved ones and the headroom. */
export function serverBudget(s: ServerSettings, headroom: number): number {
  return Math.max(1, s.maxConnections - s.superuserReserved - s.reserved - headroom);
}

/** Read a server's connection settings over a connected client. */
export async function readServerSettings(client: pg.Client): Promise<ServerSettings> {
  const { rows } = await client.query<{ name: string; setting: string }>(
    "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')",
  );
  const get = (name: string) => Number(rows.find((r) => r.name === name)?.setting ?? 0);
  return {
    maxConnections: get('max_connections'),
    superuserReserved: get('superuser_reserved_connections'),
    reserved: get('reserved_connections'),
  };
}
