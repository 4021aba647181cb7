import { QueueFullError, Semaphore } from '../../src/lib/semaphore';

/** A task that runs until the test lets it finish. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, task: () => opened };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('Semaphore', () => {
  test('runs at most `concurrency` tasks at once; the others wait and then run in arrival order', async () => {
    const s = new Semaphore(2, 10);
    const gates = [gate(), gate(), gate(), gate()];
    const started: number[] = [];
    const runs = gates.map((g, i) =>
      s.run(() => {
        started.push(i);
        return g.task();
      }),
    );
    await tick();
    expect(started).toEqual([0, 1]);
    expect(s.stats()).toEqual({ active: 2, waiting: 2, peak: 2 });

    gates[1].open();
    await tick();
    expect(started).toEqual([0, 1, 2]);
    gates[0].open();
    await tick();
    expect(started).toEqual([0, 1, 2, 3]);
    gates[2].open();
    gates[3].open();
    await Promise.all(runs);
    expect(s.stats()).toEqual({ active: 0, waiting: 0, peak: 2 });
  });

  test('refuses at once with QueueFullError when every slot is busy and the queue is full, and runs nothing of it', async () => {
    const s = new Semaphore(1, 2);
    const g = gate();
    const first = s.run(g.task);
    const queued = [s.run(async () => 'a'), s.run(async () => 'b')];
    let ran = false;
    await expect(
      s.run(async () => {
        ran = true;
      }),
    ).rejects.toBeInstanceOf(QueueFullError);
    expect(ran).toBe(false);
    expect(s.stats()).toMatchObject({ active: 1, waiting: 2 });

    g.open();
    await first;
    await expect(Promise.all(queued)).resolves.toEqual(['a', 'b']);
    // Room again once the queue drained.
    await expect(s.run(async () => 'c')).resolves.toBe('c');
  });

  test('with no queue, a second task is refused while the first runs', async () => {
    const s = new Semaphore(1, 0);
    const g = gate();
    const first = s.run(g.task);
    await expect(s.run(async () => 1)).rejects.toBeInstanceOf(QueueFullError);
    g.open();
    await first;
    await expect(s.run(async () => 2)).resolves.toBe(2);
  });

  test('a failing task frees its slot and its error reaches the caller', async () => {
    const s = new Semaphore(1, 0);
    await expect(s.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(s.stats()).toMatchObject({ active: 0, waiting: 0 });
    await expect(s.run(async () => 'next')).resolves.toBe('next');
  });

  test('tells a refused caller roughly how long the work in hand takes to drain', async () => {
    const s = new Semaphore(1, 1);
    await s.run(() => new Promise((r) => setTimeout(r, 40)));
    const g = gate();
    const running = s.run(g.task);
    const waiting = s.run(async () => undefined);
    const refused = await s.run(async () => undefined).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(QueueFullError);
    // Two tasks ahead (one running, one queued) of about 40 ms each, on one slot.
    expect((refused as QueueFullError).retryAfterMs).toBeGreaterThanOrEqual(70);
    expect((refused as QueueFullError).retryAfterMs).toBeLessThan(1000);
    g.open();
    await Promise.all([running, waiting]);
  });

  test('refuses impossible bounds', () => {
    expect(() => new Semaphore(0, 1)).toThrow(RangeError);
    expect(() => new Semaphore(1, -1)).toThrow(RangeError);
  });
});
