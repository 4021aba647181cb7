import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { BatchedCounter } from '../../src/lib/batched-counter';

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 });
const key = (name: string) => `tenantry-test:batched:${randomBytes(4).toString('hex')}:${name}`;
afterAll(() => redis.quit());

test('adds are summed in memory and reach Redis together, with their expiry, on flush', async () => {
  const counter = new BatchedCounter(redis, { intervalMs: 60_000, ttlSeconds: 120 });
  const [a, b] = [key('a'), key('b')];
  for (let i = 0; i < 25; i++) counter.add(a);
  counter.add(b, 4);
  expect(await redis.get(a)).toBeNull(); // nothing sent before the interval or a flush
  await counter.flush();
  expect(await redis.mget(a, b)).toEqual(['25', '4']);
  expect(await redis.ttl(a)).toBeGreaterThan(100);
  counter.add(a, 2);
  await counter.close();
  expect(await redis.get(a)).toBe('27');
  await redis.del(a, b);
});

test('the interval sends on its own; a failed send keeps its counts for the next one', async () => {
  const dead = new Redis('redis://127.0.0.1:1', { lazyConnect: true, enableOfflineQueue: false });
  const errors: number[] = [];
  const failing = new BatchedCounter(dead, {
    intervalMs: 10,
    ttlSeconds: 60,
    onError: (_e, keys) => errors.push(keys),
  });
  failing.add(key('lost?'), 3);
  await failing.flush();
  expect(errors).toEqual([1]);
  await failing.close(); // fails again: nothing thrown, counts kept (and reported)
  expect(errors.length).toBe(2);
  dead.disconnect();

  const counter = new BatchedCounter(redis, { intervalMs: 20, ttlSeconds: 60 });
  const k = key('timer');
  counter.add(k, 5);
  const deadline = Date.now() + 5000;
  while ((await redis.get(k)) === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(await redis.get(k)).toBe('5');
  await counter.close();
  await redis.del(k);
});
