import { ConnectionBudget, type BudgetHolder, type BudgetOptions } from '../../src/db/connection-budget';

/**
 * A server's local budget sized by its lease: the cap moves (a block borrowed, a part given back to another
 * process), the budget asks for more when a request waits, and an owner's cap can follow the whole fleet.
 */
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
function budget(max: number, options: BudgetOptions = {}): ConnectionBudget {
  const b = new ConnectionBudget(max, 10_000, options);
  budgets.push(b);
  return b;
}
afterEach(() => {
  for (const b of budgets.splice(0)) b.close();
});
const settle = () => new Promise((r) => setImmediate(r));

test('a request that finds every slot taken asks for more, and is served when the cap grows', async () => {
  let asked = 0;
  const b = budget(0, { onShort: () => asked++, shareOf: 10 });
  const store = new FakeStore('s1', 'o1');
  let served = false;
  const waiting = b.acquire(store).then(() => (served = true));
  await settle();
  expect(asked).toBe(1);
  expect(served).toBe(false);
  b.resize(4);
  await waiting;
  expect(served).toBe(true);
  expect(b.open).toBe(1);
});

test('while more slots may come, waiters do not close the idle connections of other stores', async () => {
  let growing = true;
  const b = budget(1, { canGrow: () => growing });
  const idleStore = new FakeStore('idle', 'o1');
  await b.acquire(idleStore);
  idleStore.idle = 1;
  const waiting = b.acquire(new FakeStore('busy', 'o2'));
  await new Promise((r) => setTimeout(r, 20));
  expect(idleStore.closed).toBe(0);
  // No more to borrow: now the idle connection makes room.
  growing = false;
  await new Promise((r) => setTimeout(r, 20));
  expect(idleStore.closed).toBe(1);
  b.release(idleStore);
  await waiting;
});

test('a cap cut below what is open closes idle connections, least in demand first, and grants nothing until below it', async () => {
  const b = budget(4);
  const cold = new FakeStore('cold', 'o1', 1);
  const hot = new FakeStore('hot', 'o2', 100);
  for (let i = 0; i < 2; i++) {
    await b.acquire(cold);
    await b.acquire(hot);
  }
  cold.idle = 2;
  hot.idle = 2;
  b.resize(2);
  expect(cold.closed).toBe(2);
  expect(hot.closed).toBe(0);
  let served = false;
  const waiting = b.acquire(new FakeStore('new', 'o3')).then(() => (served = true));
  b.release(cold);
  b.release(cold);
  await settle();
  // 2 open, cap 2: still full.
  expect(served).toBe(false);
  b.release(hot);
  await waiting;
});

test('a cut cap with nothing idle asks busy connections back as their queries end', async () => {
  const b = budget(3);
  const s = new FakeStore('s', 'o1');
  for (let i = 0; i < 3; i++) await b.acquire(s);
  b.resize(1);
  expect(s.giveBack).toBe(2);
});

test("an owner's cap can follow the fleet: what the other processes hold for it counts", async () => {
  let othersHold = 3;
  const b = budget(10, { ownerCap: () => Math.max(1, 4 - othersHold) });
  const s = new FakeStore('s', 'o1');
  await b.acquire(s);
  let served = false;
  const waiting = b.acquire(s).then(() => (served = true));
  await settle();
  expect(served).toBe(false);
  // The other processes closed theirs; the next release or resize looks again.
  othersHold = 0;
  b.resize(10);
  await waiting;
  expect(served).toBe(true);
});
