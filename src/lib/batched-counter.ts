import type { Redis } from 'ioredis';

export interface BatchedCounterOptions {
  /** How long counts wait in memory before they are added to Redis together. */
  intervalMs: number;
  /** Expiry set on every key written. */
  ttlSeconds: number;
  onError?(err: Error, keys: number): void;
}

/**
 * Counters kept in memory and added to Redis in one pipeline per interval (INCRBY + EXPIRE per key), so a hot
 * path counts with a Map update instead of a Redis command per event. A failed send puts its counts back for
 * the next one (the pending map holds one entry per key, whatever the number of events); what is still in
 * memory when the process is killed is lost, at most one interval's worth. close() sends the rest.
 */
export class BatchedCounter {
  private pending = new Map<string, number>();
  private timer?: NodeJS.Timeout;
  private sending: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly redis: Redis,
    private readonly options: BatchedCounterOptions,
  ) {}

  add(key: string, n = 1): void {
    this.pending.set(key, (this.pending.get(key) ?? 0) + n);
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, this.options.intervalMs);
    this.timer.unref();
  }

  /** Send what has been counted so far; resolves once it (and any send before it) is in Redis or failed. */
  flush(): Promise<void> {
    this.sending = this.sending.then(() => this.send());
    return this.sending;
  }

  /** Sends the rest once; counts a failed send puts back are not retried after close. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  private async send(): Promise<void> {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    const pipeline = this.redis.pipeline();
    for (const [key, n] of batch) pipeline.incrby(key, n).expire(key, this.options.ttlSeconds);
    try {
      const results = await pipeline.exec();
      const failed = results?.find(([err]) => err)?.[0];
      if (failed) throw failed;
    } catch (err) {
      for (const [key, n] of batch) this.add(key, n);
      this.options.onError?.(err as Error, batch.size);
    }
  }
}
