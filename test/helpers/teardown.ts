/** How long one close may take before tear-down gives up on it and goes on with the next. */
export const CLOSE_WITHIN_MS = 20_000;

/** Settle within `ms`, or reject saying what did not finish (the promise itself is left to run). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * What a suite (or a helper) opened, closed in reverse order at tear-down: each close bounded by
 * CLOSE_WITHIN_MS and its failure collected, so one that throws or hangs never keeps the others open.
 */
export class Resources {
  private closers: { name: string; close: () => Promise<void> }[] = [];

  /** Close `close` at tear-down (before everything registered earlier). */
  defer(name: string, close: () => unknown): void {
    let closing: Promise<void> | undefined;
    // Once only: a test may close something itself before tear-down comes to it.
    this.closers.push({
      name,
      close: () =>
        (closing ??= Promise.resolve()
          .then(close)
          .then(() => {})),
    });
  }

  /**
   * Start something and close it at tear-down. It is registered before it has started: when the start
   * outlives its hook's timeout, tear-down still waits for it (bounded) and closes what it made.
   */
  open<T>(name: string, start: () => Promise<T>, close: (value: T) => unknown): Promise<T> {
    const started = start();
    // Its caller awaits it; a rejection before that (while another set-up step runs) is not unhandled.
    started.catch(() => {});
    this.defer(name, async () => {
      let value: T;
      try {
        value = await started;
      } catch {
        return; // Nothing was made; the start's own error is reported where it was awaited.
      }
      await close(value);
    });
    return started;
  }

  /** Close everything registered so far, newest first; throws one error naming every close that failed. */
  async closeAll(): Promise<void> {
    const failures: string[] = [];
    for (const { name, close } of this.closers.splice(0).reverse()) {
      try {
        await within(close(), CLOSE_WITHIN_MS, name);
      } catch (err) {
        failures.push(`closing ${name}: ${message(err)}`);
      }
    }
    if (failures.length) throw new Error(`tear-down failed:\n- ${failures.join('\n- ')}`);
  }
}
