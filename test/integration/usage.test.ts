import { QueryTypes } from 'sequelize';
import { randomUUID } from 'node:crypto';
import type { Express } from 'express';
import request from 'supertest';
import { processMaintenance } from '../../src/maintenance';
import { QueueName } from '../../src/queue/queues';
import { flushRequestCounts, requestCounterKey, utcDay } from '../../src/usage/request-counter';
import { registerUser } from '../helpers/app';
import { countRows, eventually } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { auth, provisionManagedStore } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * GET /api/stores/:id/usage: credits spent per service per day, store API requests per day (counted in Redis
 * on the hot path, flushed into api_usage_logs by a maintenance job), the database size, and what the store
 * uses against its owner's plan.
 */
const t = useSuite('usage', { WORKER: 'on' });
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let store: { id: string };

beforeAll(async () => {
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  store = await provisionManagedStore(t.app, owner.token, { name: 'Counted' });
  // The tests flush when they mean to: the worker's minutely flush would race their assertions.
  await t.ctx.queues.get(QueueName.maintenance).removeJobScheduler('flush-request-counts');
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const usage = (query = '', token = owner.token, storeId = store.id) =>
  api.get(`/api/stores/${storeId}/usage${query}`).set(auth(token));
const storeRequest = (app: Express = t.app) => request(app).get('/api/store/info').set('X-Store-Id', store.id);
const counter = () => t.ctx.redis.get(requestCounterKey(t.ctx.redisPrefix, store.id, utcDay()));
const flushedToday = async () =>
  (
    await t.ctx.master.sequelize.query<{ requests: string }>(
      'SELECT requests::text AS requests FROM api_usage_logs WHERE store_id = $1::uuid AND day = $2::date',
      { bind: [store.id, utcDay()], type: QueryTypes.SELECT },
    )
  ).map((r) => Number(r.requests));

/** The statements this process sends to the master DB that write (every master query goes through Sequelize). */
function recordMasterWrites(): { writes: string[]; stop(): void } {
  const writes: string[] = [];
  const hook = (_options: unknown, query: { sql?: string }) => {
    const sql = String(query?.sql ?? '');
    if (/^\s*(WITH\b[\s\S]*)?\b(INSERT|UPDATE|DELETE|MERGE|COPY)\b/i.test(sql)) writes.push(sql);
  };
  t.ctx.master.sequelize.addHook('afterQuery', 'usage-test', hook as never);
  return { writes, stop: () => t.ctx.master.sequelize.removeHook('afterQuery', 'usage-test') };
}

describe('store API requests', () => {
  test('each one is counted in Redis, with no master-DB write; the flush stores the count once, however often it runs', async () => {
    const N = 25;
    const before = Number((await counter()) ?? 0);
    const recorder = recordMasterWrites();
    const insertsBefore = await countRows(t, 'api_usage_logs', 'store_id = :id', { id: store.id });
    try {
      for (let i = 0; i < N; i++) await storeRequest().expect(200);
      await eventually(async () => expect(Number(await counter())).toBe(before + N));
    } finally {
      recorder.stop();
    }
    expect(recorder.writes).toEqual([]);
    expect(await countRows(t, 'api_usage_logs', 'store_id = :id', { id: store.id })).toBe(insertsBefore);

    // Through the maintenance job, as the worker runs it; then again: nothing more is counted.
    const first = await processMaintenance(t.ctx, { task: 'flush-request-counts' });
    expect(first.rows).toBe(1);
    expect(await flushedToday()).toEqual([before + N]);
    const again = await flushRequestCounts(t.ctx);
    expect(again).toMatchObject({ counters: 1, rows: 0 });
    expect(await flushedToday()).toEqual([before + N]);

    // More requests after a flush: the next one stores the new absolute count, not the sum.
    for (let i = 0; i < 5; i++) await storeRequest().expect(200);
    await eventually(async () => expect(Number(await counter())).toBe(before + N + 5));
    await flushRequestCounts(t.ctx);
    expect(await flushedToday()).toEqual([before + N + 5]);

    const res = await usage().expect(200);
    const today = res.body.requests.items.find((i: { day: string }) => i.day === utcDay());
    expect(today).toEqual({ day: utcDay(), count: before + N + 5 });
    expect(res.body.requests.total).toBe(before + N + 5);
  });

  test('a flushed day Redis no longer holds stays counted, and a counter of an unknown store is skipped', async () => {
    const day = '2026-01-15';
    await t.ctx.redis.set(requestCounterKey(t.ctx.redisPrefix, store.id, day), '7', 'EX', 60);
    await t.ctx.redis.set(requestCounterKey(t.ctx.redisPrefix, randomUUID(), day), '3', 'EX', 60);
    await flushRequestCounts(t.ctx);
    await t.ctx.redis.del(requestCounterKey(t.ctx.redisPrefix, store.id, day));
    await flushRequestCounts(t.ctx);
    const res = await usage(`?from=2026-01-14&to=2026-01-16`).expect(200);
    expect(res.body.requests).toEqual({
      total: 7,
      items: [
        { day: '2026-01-14', count: 0 },
        { day: day, count: 7 },
        { day: '2026-01-16', count: 0 },
      ],
    });
  });

  test('requests that find no store are not counted; USAGE_COUNTING=off counts nothing', async () => {
    await flushRequestCounts(t.ctx);
    const before = Number(await counter());
    await request(t.app).get('/api/store/info').set('X-Store-Id', randomUUID()).expect(404);
    const uncounted = await t.instance({ USAGE_COUNTING: 'off' });
    for (let i = 0; i < 3; i++) await storeRequest(uncounted.app).expect(200);
    // One counted request after them: once it is in, the ones before it would have been too.
    await storeRequest().expect(200);
    await eventually(async () => expect(Number(await counter())).toBe(before + 1));
  });
});

describe('GET /api/stores/:id/usage', () => {
  test('credits spent per service per day, the database size and the counts against the plan', async () => {
    await api
      .post(`/api/stores/${store.id}/credits/purchase`)
      .set(auth(owner.token))
      .send({ amount: 1000, idempotencyKey: randomUUID() })
      .expect(201);
    const costs = (await api.get('/api/credits/costs').expect(200)).body.items as {
      service: string;
      costPerUnit: number;
    }[];
    const [a, b] = costs;
    for (const [service, quantity] of [
      [a.service, 2],
      [a.service, 3],
      [b.service, 1],
    ] as const) {
      await api
        .post(`/api/stores/${store.id}/credits/spend`)
        .set(auth(owner.token))
        .send({ service, quantity, idempotencyKey: randomUUID() })
        .expect(201);
    }
    for (const sku of ['U-1', 'U-2'])
      await request(t.app)
        .post('/api/store/products')
        .set('X-Store-Id', store.id)
        .set(auth(owner.token))
        .send({ sku, name: sku, priceCents: 100, stock: 1 })
        .expect(201);
    await request(t.app)
      .post('/api/store/staff')
      .set('X-Store-Id', store.id)
      .set(auth(owner.token))
      .send({ email: 'clerk@example.test', name: 'Clerk', password: 'clerk-password-1', role: 'staff' })
      .expect(201);
    await api
      .post(`/api/stores/${store.id}/hostnames`)
      .set(auth(owner.token))
      .send({ hostname: 'usage-shop.example.com' })
      .expect(201);

    const res = await usage().expect(200);
    const today = utcDay();
    const expected = [
      { day: today, service: a.service, quantity: 5, credits: 5 * a.costPerUnit },
      { day: today, service: b.service, quantity: 1, credits: b.costPerUnit },
    ].sort((x, y) => x.service.localeCompare(y.service));
    expect(res.body.credits).toEqual({ total: 5 * a.costPerUnit + b.costPerUnit, items: expected });
    expect(res.body.to).toBe(today);
    expect(res.body.requests.items).toHaveLength(30);
    expect(res.body.database.sizeBytes).toBeGreaterThan(1_000_000);
    const pro = await t.ctx.master.models.Plan.findByPk('pro', { rejectOnEmpty: true });
    expect(res.body.plan).toEqual({ id: 'pro', name: pro.name });
    expect(res.body.limits).toMatchObject({
      stores: { used: 1, limit: pro.maxStores },
      products: { used: 2, limit: pro.maxProducts },
      staff: { used: 1, limit: pro.maxStaff },
      hostnames: { used: 1, limit: pro.maxHostnames },
    });
    expect(res.body.limits.storageMb.used).toBe(Math.ceil(res.body.database.sizeBytes / 1048576));

    // Spending of other days stays out of a range that ends before today.
    const yesterday = new Date(Date.now() - 86400_000).toISOString().slice(0, 10);
    const past = await usage(`?from=2026-01-01&to=${yesterday > '2026-01-01' ? yesterday : '2026-01-01'}`).expect(200);
    expect(past.body.credits).toEqual({ total: 0, items: [] });
  });

  test('bad ranges → 400 VALIDATION_FAILED', async () => {
    expectValidationErrors(await usage('?from=2026-02-30'), ['from']);
    expectValidationErrors(await usage('?from=yesterday'), ['from']);
    expectValidationErrors(await usage('?from=2026-03-02&to=2026-03-01'), ['from']);
    expectValidationErrors(await usage('?from=2025-01-01&to=2026-01-02'), ['to']);
    expectValidationErrors(await usage('?from=2099-01-01'), ['from']);
    expectValidationErrors(await usage('?days=3'), ['days']);
    const longest = await usage('?from=2025-01-01&to=2026-01-01').expect(200);
    expect(longest.body.requests.items).toHaveLength(366);
  });

  test("another store's owner, a staff member and a store token get 403; no token 401", async () => {
    const stranger = await registerUser(t.app);
    expectProblem(await usage('', stranger.token), 403, 'FORBIDDEN');
    const member = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: member.user.id, role: 'staff' });
    expectProblem(await usage('', member.token), 403, 'FORBIDDEN');
    const storeLogin = await request(t.app)
      .post('/api/store/auth/login')
      .set('X-Store-Id', store.id)
      .send({ email: 'clerk@example.test', password: 'clerk-password-1' })
      .expect(200);
    expectProblem(await usage('', storeLogin.body.token), 403, 'WRONG_TOKEN_TYPE');
    expectProblem(await api.get(`/api/stores/${store.id}/usage`), 401, 'UNAUTHENTICATED');
    expectProblem(await usage('', owner.token, randomUUID()), 404, 'STORE_NOT_FOUND');
  });
});
