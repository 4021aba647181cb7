import { LRUCache } from 'lru-cache';
import { QueryTypes } from 'sequelize';
import type { EventBus } from '../lib/bus';
import type { MasterDb } from './master';

/** Tokens refilled continuously at `perSecond`, at most one second's worth banked. */
class TokenBucket {
  private tokens: number;
  private last = Date.now();

  constructor(private readonly perSecond: number) {
    this.tokens = perSecond;
  }

  take(): boolean {
    const now = Date.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}

export interface HostResolverOptions {
  /** How long an unknown hostname is remembered as unknown. */
  negativeHostTtlMs?: number;
  /** Master-DB look-ups of hosts not in the cache, per second (HOST_LOOKUPS_PER_SECOND). */
  hostLookupsPerSecond?: number;
}

const NO_STORE = '';

/**
 * Which store a verified hostname belongs to. Unknown hosts are remembered briefly, concurrent look-ups of
 * one host share a query, and look-ups of hosts never seen are rate limited per instance: past
 * HOST_LOOKUPS_PER_SECOND an unknown host is answered as unknown without asking the master DB.
 */
export class HostResolver {
  private readonly hosts = new LRUCache<string, string>({ max: 100_000, ttl: 5 * 60_000 });
  private readonly lookups = new Map<string, Promise<string | null>>();
  private readonly lookupBudget: TokenBucket;
  private readonly counters = { hits: 0, misses: 0, lookupsRefused: 0 };

  constructor(
    private readonly master: MasterDb,
    bus: EventBus,
    private readonly options: HostResolverOptions,
  ) {
    this.lookupBudget = new TokenBucket(options.hostLookupsPerSecond ?? 50);
    bus.on('hostnames.changed', (e) => e.hostnames.forEach((h) => this.hosts.delete(h)));
    // Messages may have been missed while disconnected: forget what could be stale.
    bus.onReconnect(() => this.hosts.clear());
  }

  /** The store a verified hostname belongs to, or null. */
  async storeIdForHost(hostname: string): Promise<string | null> {
    const cached = this.cachedStoreIdForHost(hostname);
    if (cached !== undefined) return cached;
    let pending = this.lookups.get(hostname);
    if (!pending) {
      if (!this.lookupBudget.take()) {
        this.counters.lookupsRefused++;
        return null;
      }
      pending = this.lookUp(hostname).finally(() => this.lookups.delete(hostname));
      this.lookups.set(hostname, pending);
    }
    return pending;
  }

  /**
   * What the cache knows, without a promise (the hot path asks this first): a store id, null (known
   * unknown), or undefined (ask storeIdForHost).
   */
  cachedStoreIdForHost(hostname: string): string | null | undefined {
    const cached = this.hosts.get(hostname);
    if (cached === undefined) return undefined;
    this.counters.hits++;
    return cached === NO_STORE ? null : cached;
  }

  stats() {
    return {
      size: this.hosts.size,
      hits: this.counters.hits,
      misses: this.counters.misses,
      lookupsRefused: this.counters.lookupsRefused,
    };
  }

  private async lookUp(hostname: string): Promise<string | null> {
    this.counters.misses++;
    const rows = await this.master.sequelize.query<{ store_id: string }>(
      "SELECT store_id FROM store_hostnames WHERE hostname = $1 AND status = 'verified'",
      {
        bind: [hostname],
        type: QueryTypes.SELECT,
      },
    );
    const storeId = rows[0]?.store_id ?? null;
    this.hosts.set(hostname, storeId ?? NO_STORE, storeId ? {} : { ttl: this.options.negativeHostTtlMs ?? 5000 });
    return storeId;
  }
}
