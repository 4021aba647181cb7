/** Refused at once: every slot is busy and the queue is full. */
export class QueueFullError extends Error {
  constructor(readonly retryAfterMs: number) {
    super('every slot is busy and the queue is full');
    this.name = 'QueueFullError';
  }
}

/**
 * At most `concurrency` tasks run at once; up to `queueMax` more wait their turn in arrival order; beyond
 * that a task is refused at once (QueueFullError) rather than piling up work nobody will wait for.
 */
export class Semaphore {
  private active = 0;
  private peak = 0;
  private readonly waiting: (() => void)[] = [];
  /** Running mean of how long a task holds its slot, for telling a refused caller when to come back. */
  private meanMs = 0;
  private runs = 0;

  constructor(
    readonly concurrency: number,
    readonly queueMax: number,
  ) {
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new RangeError('concurrency must be a positive integer');
    if (!Number.isInteger(queueMax) || queueMax < 0) throw new RangeError('queueMax must be a non-negative integer');
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    await this.acquire();
    const started = Date.now();
    try {
      return await task();
    } finally {
      this.record(Date.now() - started);
      this.release();
    }
  }

  /** Tasks running, tasks waiting, and the most ever running at once. */
  stats(): { active: number; waiting: number; peak: number } {
    return { active: this.active, waiting: this.waiting.length, peak: this.peak };
  }

  /** Roughly how long until everything running and queued now has finished. */
  drainEstimateMs(): number {
    return Math.ceil(((this.active + this.waiting.length) / this.concurrency) * this.meanMs);
  }

  private acquire(): Promise<void> {
    if (this.active < this.concurrency) {
      this.active++;
      this.peak = Math.max(this.peak, this.active);
      return Promise.resolve();
    }
    if (this.waiting.length >= this.queueMax) return Promise.reject(new QueueFullError(this.drainEstimateMs()));
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    // The slot passes straight to the next waiter, so `active` does not change and nobody can jump the queue.
    if (next) next();
    else this.active--;
  }

  private record(ms: number): void {
    this.runs = Math.min(this.runs + 1, 20);
    this.meanMs += (ms - this.meanMs) / this.runs;
  }
}
