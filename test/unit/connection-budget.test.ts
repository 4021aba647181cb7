import { BudgetTimeoutError, ConnectionBudget, ownerMaxFor, type BudgetHolder } from '../../src/db/connection-budget';

/** A store's pool as the budget sees it: `idle` of its connections could be closed, the rest are busy. */
class FakeStore implements BudgetHolder {
  open = 0;
  giveBack = 0;
  idle = 0;
  closed = 0;
  constructor(
    readonly storeId: string,
    readonly ownerId: string,
    private readonly heat = 0,
  ) {}
  demand(): number {
    return this.heat;
  }
  idleConnections(): number {
    return this.idle;
  }
  closeIdle(max: number): number {
    const n = Math.min(max, this.idle);
    this.idle -= n;
    this.closed += n;
    return n;
  }
}

const budgets: ConnectionBudget[] = [];
function budget(max: number, ownerShare = 1, waitMs = 10_000): ConnectionBudget {
  const b = new ConnectionBudget(max, waitMs, { ownerShare });
  budgets.push(b);
  return b;
}
afterEach(() => {
  for (const b of budgets.splice(0)) b.close();
});

const settle = () => new Promise((r) => setImmediate(r));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Asks for a slot and records, in `served`, the store it went to once granted. */
function ask(b: ConnectionBudget, store: FakeStore, served: string[]): Promise<void> {
  return b.acquire(store).then(
    () => void served.push(store.storeId),
    () => undefined,
  );
}

test('an owner share is a fraction of the cap rounded down, at least one connection and at most the cap', () => {
  expect(ownerMaxFor(12, 0.25)).toBe(3);
  expect(ownerMaxFor(60, 0.25)).toBe(15);
  expect(ownerMaxFor(100, 0.29)).toBe(29);
  expect(ownerMaxFor(3, 0.25)).toBe(1);
  expect(ownerMaxFor(10, 1)).toBe(10);
  expect(ownerMaxFor(10, 0.01)).toBe(1);
});

test('below the cap a slot is granted at once, without waiting', async () => {
  const b = budget(2);
  const a = new FakeStore('a', 'owner-a');
  const served: string[] = [];
  await ask(b, a, served);
  await ask(b, a, served);
  expect(served).toEqual(['a', 'a']);
  expect(b.open).toBe(2);
  expect(b.waits).toBe(0);
});

test('freed slots go to the waiting stores in turn, not to the store that asked first and most', async () => {
  const b = budget(2);
  const busy = new FakeStore('busy', 'owner-busy');
  const [a, c, d] = [new FakeStore('a', 'owner-a'), new FakeStore('c', 'owner-c'), new FakeStore('d', 'owner-d')];
  const served: string[] = [];
  await ask(b, busy, served);
  await ask(b, busy, served);
  served.length = 0;

  // Store a asks three times before c and d ask once each.
  const pending = [ask(b, a, served), ask(b, a, served), ask(b, a, served), ask(b, c, served), ask(b, d, served)];
  await settle();
  expect(served).toEqual([]);
  expect(b.waiting).toBe(5);

  for (const holder of [busy, busy, a, c, d]) {
    b.release(holder);
    await settle();
  }
  await Promise.all(pending);
  expect(served).toEqual(['a', 'c', 'd', 'a', 'a']);
  expect(b.waiting).toBe(0);
  expect(b.peak).toBe(2);
});

test("an owner at its share waits for its own stores' connections, while another owner takes a free slot", async () => {
  const b = budget(4, 0.5);
  expect(b.ownerMax).toBe(2);
  const [a1, a2] = [new FakeStore('a1', 'owner-a'), new FakeStore('a2', 'owner-a')];
  const other = new FakeStore('b1', 'owner-b');
  const served: string[] = [];
  await ask(b, a1, served);
  await ask(b, a1, served);

  const a2Served = ask(b, a2, served);
  await settle();
  // Two slots are free, yet a2 waits: its owner holds its share.
  expect(b.open).toBe(2);
  expect(served).toEqual(['a1', 'a1']);
  expect(b.ownerUsage().find((o) => o.ownerId === 'owner-a')).toMatchObject({ open: 2, waiting: 1 });

  // Another owner's store is served at once meanwhile.
  await ask(b, other, served);
  expect(served).toEqual(['a1', 'a1', 'b1']);

  // An idle connection of the same owner's other store is closed to make room; the other owner's is not.
  other.idle = 1;
  a1.idle = 1;
  await sleep(30);
  expect(a1.closed).toBe(1);
  expect(a1.giveBack).toBe(0);
  expect(other.closed).toBe(0);

  b.release(a1); // the closed connection ends
  await a2Served;
  expect(served).toEqual(['a1', 'a1', 'b1', 'a2']);
  expect(b.ownerUsage().find((o) => o.ownerId === 'owner-a')).toMatchObject({ open: 2, peak: 2, waiting: 0 });
});

test("an owner's waiting store is not served from a slot another owner's store frees", async () => {
  const b = budget(3, 2 / 3);
  const a = new FakeStore('a', 'owner-a');
  const x = new FakeStore('x', 'owner-x');
  const served: string[] = [];
  await ask(b, a, served);
  await ask(b, a, served);
  await ask(b, x, served);
  served.length = 0;

  const aWaits = ask(b, a, served);
  const yWaits = ask(b, new FakeStore('y', 'owner-y'), served);
  await settle();
  b.release(x);
  await settle();
  // a asked first, but its owner is at its share: y gets the slot.
  expect(served).toEqual(['y']);
  b.release(a);
  await Promise.all([aWaits, yWaits]);
  expect(served).toEqual(['y', 'a']);
});

test('with every connection busy, stores holding two more than a waiting one give one back as their queries end, one at a time', async () => {
  const b = budget(3);
  const hog = new FakeStore('hog', 'owner-hog');
  const [small, small2, late] = [
    new FakeStore('small', 'owner-s'),
    new FakeStore('small2', 'owner-s2'),
    new FakeStore('late', 'owner-l'),
  ];
  const served: string[] = [];
  for (let i = 0; i < 3; i++) await ask(b, hog, served);
  served.length = 0;

  const waiting = [ask(b, small, served), ask(b, small2, served)];
  await sleep(30);
  // One asked for, not one per waiter: the next look asks again once that one is back.
  expect(hog.giveBack).toBe(1);
  hog.giveBack--;
  b.release(hog);
  await settle();
  expect(served).toEqual(['small']);

  await sleep(30);
  expect(hog.giveBack).toBe(1); // 2 against 0: one more
  hog.giveBack--;
  b.release(hog);
  await Promise.all(waiting);
  expect(served).toEqual(['small', 'small2']);

  // 1, 1 and 1 against 0: moving a connection would only move the wait.
  const lateServed = ask(b, late, served);
  await sleep(30);
  expect([hog, small, small2].map((h) => h.giveBack)).toEqual([0, 0, 0]);
  b.close();
  await lateServed;
});

test('a store that waits longer than the wait limit gets BudgetTimeoutError and leaves the line', async () => {
  const b = budget(1, 1, 50);
  const a = new FakeStore('a', 'owner-a');
  await b.acquire(a);
  await expect(b.acquire(new FakeStore('late', 'owner-b'))).rejects.toBeInstanceOf(BudgetTimeoutError);
  expect(b.waiting).toBe(0);
  expect(b.timeouts).toBe(1);
  expect(b.ownerUsage().map((o) => o.ownerId)).toEqual(['owner-a']);
});
