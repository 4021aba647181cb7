import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { countRows, insertStore } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { useSuite } from '../helpers/suite';

const t = useSuite('credits');
let server: Server;
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let staff: Awaited<ReturnType<typeof registerUser>>;
let outsider: Awaited<ReturnType<typeof registerUser>>;
let admin: Awaited<ReturnType<typeof registerUser>>;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const key = () => randomUUID();

beforeAll(async () => {
  server = t.listen();
  api = recordingClient(t.app);
  [owner, staff, outsider, admin] = await Promise.all([
    registerUser(t.app),
    registerUser(t.app),
    registerUser(t.app),
    registerAdmin(t),
  ]);
  // A service that is no longer offered.
  await t.ctx.master.sequelize.query(
    `INSERT INTO service_credit_costs (service, cost_per_unit, description, active) VALUES ('fax', 3, 'One fax', false)`,
  );
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

/** A store of the owner (written straight into the master, so plan limits do not get in the way), with a staff member. */
async function newStore(options: { status?: 'active' | 'suspended' | 'pending_database' } = {}) {
  const store = await insertStore(t, owner.user.id, { status: options.status ?? 'active' });
  await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: staff.user.id, role: 'staff' });
  return store.id;
}

const as = (token: string) => ({
  get: (path: string) => api.get(path).set('Authorization', `Bearer ${token}`),
  post: (path: string) => api.post(path).set('Authorization', `Bearer ${token}`),
});
const purchase = (storeId: string, body: object, token = owner.token) =>
  as(token).post(`/api/stores/${storeId}/credits/purchase`).send(body);
const spend = (storeId: string, body: object, token = owner.token) =>
  as(token).post(`/api/stores/${storeId}/credits/spend`).send(body);
const adjust = (storeId: string, body: object, token = admin.token) =>
  as(token).post(`/api/admin/stores/${storeId}/credits/adjust`).send(body);
const credits = (storeId: string, token = owner.token, query = '') =>
  as(token).get(`/api/stores/${storeId}/credits${query}`);

async function fund(storeId: string, amount: number) {
  const res = await purchase(storeId, { amount, idempotencyKey: key() });
  expect(res.status).toBe(201);
  return res.body;
}

async function master<R extends object>(sql: string, replacements: Record<string, unknown> = {}): Promise<R[]> {
  return t.ctx.master.sequelize.query<R>(sql, { replacements, type: QueryTypes.SELECT });
}

async function balanceOf(storeId: string): Promise<number> {
  const rows = await master<{ balance: string }>('SELECT balance FROM credit_balances WHERE store_id = :storeId', {
    storeId,
  });
  return rows.length ? Number(rows[0].balance) : 0;
}

/** The ledger's invariant for one store: the balance is the sum of its completed rows, numbered 1..n, never negative. */
async function expectLedgerConsistent(storeId: string) {
  const [row] = await master<{
    balance: string | null;
    seq: string | null;
    sum: string;
    n: string;
    maxseq: string | null;
    negatives: string;
  }>(
    `SELECT b.balance, b.seq,
            (SELECT coalesce(sum(amount), 0) FROM credit_transactions WHERE store_id = :storeId AND status = 'completed') AS sum,
            (SELECT count(*) FROM credit_transactions WHERE store_id = :storeId AND status = 'completed') AS n,
            (SELECT max(seq) FROM credit_transactions WHERE store_id = :storeId) AS maxseq,
            (SELECT count(*) FROM credit_transactions WHERE store_id = :storeId AND balance_after < 0) AS negatives
       FROM (SELECT 1) one LEFT JOIN credit_balances b ON b.store_id = :storeId`,
    { storeId },
  );
  expect(Number(row.balance ?? 0)).toBe(Number(row.sum));
  expect(Number(row.seq ?? 0)).toBe(Number(row.n));
  expect(Number(row.maxseq ?? 0)).toBe(Number(row.n));
  expect(Number(row.negatives)).toBe(0);
}

describe('GET /api/credits/costs', () => {
  test('is public and lists every active service with its cost per unit, and the price of a credit', async () => {
    const res = await api.get('/api/credits/costs').expect(200);
    expect(res.body.creditPrice).toEqual({ amountCents: 1, currency: 'EUR' });
    expect(res.body.items).toEqual(
      expect.arrayContaining([
        { service: 'email', costPerUnit: 1, description: expect.any(String) },
        { service: 'sms', costPerUnit: 5, description: expect.any(String) },
        { service: 'export', costPerUnit: 20, description: expect.any(String) },
      ]),
    );
    expect(res.body.items.map((i: { service: string }) => i.service)).not.toContain('fax');
  });
});

describe('purchase (PAYMENTS_PROVIDER=manual)', () => {
  test('completes at once: 201 with the transaction, the new balance and the payment; the ledger, billing and audit rows agree', async () => {
    const storeId = await newStore();
    const k = key();
    const res = await purchase(storeId, { amount: 250, idempotencyKey: k }).expect(201);
    expect(res.body).toEqual({
      transaction: {
        id: expect.stringMatching(UUID),
        type: 'purchase',
        status: 'completed',
        amount: 250,
        balanceAfter: 250,
        service: null,
        quantity: null,
        reason: null,
        idempotencyKey: k,
        createdAt: expect.any(String),
      },
      balance: 250,
      payment: { provider: 'manual', reference: null, amountCents: 250, currency: 'EUR', status: 'succeeded' },
    });
    expect(await balanceOf(storeId)).toBe(250);
    const billing = await master<{
      provider: string;
      status: string;
      amount_cents: number;
      credit_transaction_id: string;
    }>(
      'SELECT provider, status, amount_cents, credit_transaction_id FROM billing_transactions WHERE store_id = :storeId',
      { storeId },
    );
    expect(billing).toEqual([
      { provider: 'manual', status: 'succeeded', amount_cents: 250, credit_transaction_id: res.body.transaction.id },
    ]);
    const audit = await master<{ action: string; actor_user_id: string; target_id: string; request_id: string | null }>(
      `SELECT action, actor_user_id, target_id, request_id FROM audit_log WHERE store_id = :storeId AND action LIKE 'credits.%'`,
      { storeId },
    );
    expect(audit).toEqual([
      {
        action: 'credits.purchase',
        actor_user_id: owner.user.id,
        target_id: res.body.transaction.id,
        request_id: res.headers['x-request-id'],
      },
    ]);
    await expectLedgerConsistent(storeId);
  });

  test('the same idempotency key returns the first answer again and charges once; with another amount it is 409 CONFLICT', async () => {
    const storeId = await newStore();
    const k = key();
    const first = await purchase(storeId, { amount: 100, idempotencyKey: k }).expect(201);
    await purchase(storeId, { amount: 7, idempotencyKey: key() }).expect(201);
    const again = await purchase(storeId, { amount: 100, idempotencyKey: k }).expect(201);
    expect(again.body).toEqual(first.body);
    expect(await balanceOf(storeId)).toBe(107);
    expectProblem(await purchase(storeId, { amount: 101, idempotencyKey: k }), 409, 'CONFLICT');
    // Keys belong to a store: another store may use the same one.
    const other = await newStore();
    await purchase(other, { amount: 5, idempotencyKey: k }).expect(201);
    expect(await balanceOf(storeId)).toBe(107);
    expect(await countRows(t, 'credit_transactions', 'store_id = :storeId', { storeId })).toBe(2);
  });

  test('only the owner and store admins may buy: staff and non-members get 403, no token 401, an unknown store 404', async () => {
    const storeId = await newStore();
    expectProblem(await purchase(storeId, { amount: 10, idempotencyKey: key() }, staff.token), 403, 'FORBIDDEN');
    expectProblem(await purchase(storeId, { amount: 10, idempotencyKey: key() }, outsider.token), 403, 'FORBIDDEN');
    expectProblem(
      await api.post(`/api/stores/${storeId}/credits/purchase`).send({ amount: 10, idempotencyKey: key() }),
      401,
      'UNAUTHENTICATED',
    );
    expectProblem(await purchase(randomUUID(), { amount: 10, idempotencyKey: key() }), 404, 'STORE_NOT_FOUND');
    // A store token (a user inside the store's own database) is not a platform token.
    const storeToken = t.ctx.tokens.sign({ sub: randomUUID(), typ: 'store', role: 'admin', storeId }).token;
    expectProblem(await purchase(storeId, { amount: 10, idempotencyKey: key() }, storeToken), 403, 'WRONG_TOKEN_TYPE');
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }, storeToken),
      403,
      'WRONG_TOKEN_TYPE',
    );
    expect(await balanceOf(storeId)).toBe(0);
    expect(await countRows(t, 'credit_transactions', 'store_id = :storeId', { storeId })).toBe(0);
  });

  test('returns 400 for an amount that is not a positive integer, a missing key or unknown fields, and changes nothing', async () => {
    const storeId = await newStore();
    expectValidationErrors(await purchase(storeId, { amount: 1.5, idempotencyKey: key() }), ['amount']);
    expectValidationErrors(await purchase(storeId, { amount: -5, idempotencyKey: key() }), ['amount']);
    expectValidationErrors(await purchase(storeId, { amount: 0, idempotencyKey: key() }), ['amount']);
    expectValidationErrors(await purchase(storeId, { amount: '10', idempotencyKey: key() }), ['amount']);
    expectValidationErrors(await purchase(storeId, { amount: 10_000_001, idempotencyKey: key() }), ['amount']);
    expectValidationErrors(await purchase(storeId, { amount: 10 }), ['idempotencyKey']);
    expectValidationErrors(await purchase(storeId, { amount: 10, idempotencyKey: '' }), ['idempotencyKey']);
    expectProblem(
      await purchase(storeId, { amount: 10, idempotencyKey: key(), balance: 1_000_000 }),
      400,
      'VALIDATION_FAILED',
    );
    expectProblem(await purchase('not-a-uuid', { amount: 10, idempotencyKey: key() }), 400, 'VALIDATION_FAILED');
    expect(await countRows(t, 'credit_transactions', 'store_id = :storeId', { storeId })).toBe(0);
  });

  test('marks the onboarding credits step done', async () => {
    const solo = await registerUser(t.app);
    const created = await as(solo.token)
      .post('/api/stores')
      .send({ name: 'Solo', slug: `solo-${Date.now().toString(36)}` })
      .expect(201);
    const step = async () =>
      ((await as(solo.token).get('/api/onboarding').expect(200)).body.steps as { id: string; done: boolean }[]).find(
        (s) => s.id === 'credits',
      );
    expect(await step()).toMatchObject({ done: false });
    await purchase(created.body.id, { amount: 10, idempotencyKey: key() }, solo.token).expect(201);
    expect(await step()).toMatchObject({ done: true });
  });
});

describe('spend', () => {
  test('charges quantity × the cost per unit and returns the transaction and the balance; usage_metrics and the audit log count it', async () => {
    const storeId = await newStore();
    await fund(storeId, 100);
    const k = key();
    const res = await spend(storeId, { service: 'sms', quantity: 3, idempotencyKey: k }).expect(201);
    expect(res.body).toEqual({
      transaction: {
        id: expect.stringMatching(UUID),
        type: 'spend',
        status: 'completed',
        amount: -15,
        balanceAfter: 85,
        service: 'sms',
        quantity: 3,
        reason: null,
        idempotencyKey: k,
        createdAt: expect.any(String),
      },
      balance: 85,
    });
    await spend(storeId, { service: 'sms', quantity: 2, idempotencyKey: key() }).expect(201);
    await spend(storeId, { service: 'email', quantity: 4, idempotencyKey: key() }, staff.token).expect(201);
    expect(await balanceOf(storeId)).toBe(71);

    const usage = await master<{ service: string; day: string; quantity: string; credits: string }>(
      `SELECT service, day::text AS day, quantity, credits FROM usage_metrics WHERE store_id = :storeId ORDER BY service`,
      { storeId },
    );
    const today = new Date().toISOString().slice(0, 10);
    expect(usage.map((u) => ({ ...u, quantity: Number(u.quantity), credits: Number(u.credits) }))).toEqual([
      { service: 'email', day: today, quantity: 4, credits: 4 },
      { service: 'sms', day: today, quantity: 5, credits: 25 },
    ]);
    const audit = await master<{ action: string; actor_user_id: string; data: Record<string, unknown> }>(
      `SELECT action, actor_user_id, data FROM audit_log WHERE store_id = :storeId AND action = 'credits.spend' ORDER BY id`,
      { storeId },
    );
    expect(audit).toHaveLength(3);
    expect(audit[0]).toEqual({
      action: 'credits.spend',
      actor_user_id: owner.user.id,
      data: expect.objectContaining({ amount: -15, balanceAfter: 85, service: 'sms', quantity: 3 }),
    });
    expect(audit[2].actor_user_id).toBe(staff.user.id);
    await expectLedgerConsistent(storeId);
  });

  test('returns 402 INSUFFICIENT_CREDITS when the balance does not cover the price, and changes nothing', async () => {
    const storeId = await newStore();
    await fund(storeId, 19);
    expectProblem(
      await spend(storeId, { service: 'export', quantity: 1, idempotencyKey: key() }),
      402,
      'INSUFFICIENT_CREDITS',
    );
    expect(await balanceOf(storeId)).toBe(19);
    expect(await countRows(t, 'credit_transactions', `store_id = :storeId AND type = 'spend'`, { storeId })).toBe(0);
    expect(await countRows(t, 'usage_metrics', 'store_id = :storeId', { storeId })).toBe(0);
    expect(await countRows(t, 'audit_log', `store_id = :storeId AND action = 'credits.spend'`, { storeId })).toBe(0);
    // Exactly the balance is enough.
    await spend(storeId, { service: 'email', quantity: 19, idempotencyKey: key() }).expect(201);
    expect(await balanceOf(storeId)).toBe(0);
  });

  test('a store that never had credits has a balance of 0 and gets 402', async () => {
    const storeId = await newStore();
    await t.ctx.master.models.CreditBalance.destroy({ where: { storeId } });
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }),
      402,
      'INSUFFICIENT_CREDITS',
    );
    expect((await credits(storeId).expect(200)).body).toEqual({
      balance: 0,
      transactions: { items: [], nextCursor: null },
    });
    await fund(storeId, 3);
    expect(await balanceOf(storeId)).toBe(3);
    await expectLedgerConsistent(storeId);
  });

  test('returns 400 for an unknown or inactive service and changes nothing', async () => {
    const storeId = await newStore();
    await fund(storeId, 100);
    expectValidationErrors(await spend(storeId, { service: 'telepathy', quantity: 1, idempotencyKey: key() }), [
      'service',
    ]);
    expectValidationErrors(await spend(storeId, { service: 'fax', quantity: 1, idempotencyKey: key() }), ['service']);
    expect(await balanceOf(storeId)).toBe(100);
    expect(await countRows(t, 'credit_transactions', `store_id = :storeId AND type = 'spend'`, { storeId })).toBe(0);
  });

  test('returns 400 for a bad quantity, a missing key or unknown fields', async () => {
    const storeId = await newStore();
    await fund(storeId, 100);
    expectValidationErrors(await spend(storeId, { service: 'email', quantity: 0, idempotencyKey: key() }), [
      'quantity',
    ]);
    expectValidationErrors(await spend(storeId, { service: 'email', quantity: -1, idempotencyKey: key() }), [
      'quantity',
    ]);
    expectValidationErrors(await spend(storeId, { service: 'email', quantity: 1.5, idempotencyKey: key() }), [
      'quantity',
    ]);
    expectValidationErrors(await spend(storeId, { service: 'email', quantity: 1 }), ['idempotencyKey']);
    expectValidationErrors(await spend(storeId, { quantity: 1, idempotencyKey: key() }), ['service']);
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key(), amount: -1 }),
      400,
      'VALIDATION_FAILED',
    );
    expectProblem(
      await as(owner.token)
        .post(`/api/stores/${storeId}/credits/spend`)
        .set('Content-Type', 'application/json')
        .send('{"service":'),
      400,
      'MALFORMED_JSON',
    );
    expect(await balanceOf(storeId)).toBe(100);
  });

  test('members may spend (owner, admin, staff); non-members get 403; a suspended store 423', async () => {
    const storeId = await newStore();
    await fund(storeId, 10);
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }, outsider.token),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }, admin.token),
      403,
      'FORBIDDEN',
    );
    await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }, staff.token).expect(201);
    await t.ctx.master.models.Store.update({ status: 'suspended' }, { where: { id: storeId } });
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: key() }),
      423,
      'STORE_SUSPENDED',
    );
    expect(await balanceOf(storeId)).toBe(9);
  });

  test('the same key returns the first answer (with the balance of that moment) even after later changes; with another body it is 409', async () => {
    const storeId = await newStore();
    await fund(storeId, 50);
    const k = key();
    const first = await spend(storeId, { service: 'image_processing', quantity: 2, idempotencyKey: k }).expect(201);
    await spend(storeId, { service: 'email', quantity: 5, idempotencyKey: key() }).expect(201);
    const again = await spend(storeId, { service: 'image_processing', quantity: 2, idempotencyKey: k }).expect(201);
    expect(again.body).toEqual(first.body);
    expect(again.body.balance).toBe(46);
    expect(await balanceOf(storeId)).toBe(41);
    expectProblem(
      await spend(storeId, { service: 'image_processing', quantity: 3, idempotencyKey: k }),
      409,
      'CONFLICT',
    );
    expectProblem(await spend(storeId, { service: 'email', quantity: 2, idempotencyKey: k }), 409, 'CONFLICT');
    // A purchase key cannot be replayed as a spend either.
    const bought = await fund(storeId, 1);
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: bought.transaction.idempotencyKey }),
      409,
      'CONFLICT',
    );
    expect(await balanceOf(storeId)).toBe(42);
  });

  test('a refused spend does not use up its key: after a purchase the same key succeeds', async () => {
    const storeId = await newStore();
    const k = key();
    expectProblem(
      await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: k }),
      402,
      'INSUFFICIENT_CREDITS',
    );
    await fund(storeId, 1);
    await spend(storeId, { service: 'email', quantity: 1, idempotencyKey: k }).expect(201);
    expect(await balanceOf(storeId)).toBe(0);
  });
});

describe('concurrency', () => {
  test('200 concurrent spends of 1 credit against a balance of 100: exactly 100 succeed, 100 get 402, the balance ends at 0 and never went negative', async () => {
    const storeId = await newStore();
    await fund(storeId, 100);
    const results = await Promise.all(
      Array.from({ length: 200 }, () =>
        request(server)
          .post(`/api/stores/${storeId}/credits/spend`)
          .set('Authorization', `Bearer ${owner.token}`)
          .send({ service: 'email', quantity: 1, idempotencyKey: key() }),
      ),
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(100);
    expect(statuses.filter((s) => s === 402)).toHaveLength(100);
    for (const r of results.filter((r) => r.status === 402)) expectProblem(r, 402, 'INSUFFICIENT_CREDITS');
    expect(await balanceOf(storeId)).toBe(0);
    // Every balance from 99 down to 0 was reached exactly once: the spends were applied one after another.
    const after = results.filter((r) => r.status === 201).map((r) => r.body.transaction.balanceAfter as number);
    expect(after.sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    const [{ sum }] = await master<{ sum: string }>(
      `SELECT sum(amount) AS sum FROM credit_transactions WHERE store_id = :storeId AND status = 'completed'`,
      { storeId },
    );
    expect(Number(sum)).toBe(0);
    const [usage] = await master<{ quantity: string; credits: string }>(
      'SELECT quantity, credits FROM usage_metrics WHERE store_id = :storeId',
      { storeId },
    );
    expect([Number(usage.quantity), Number(usage.credits)]).toEqual([100, 100]);
    await expectLedgerConsistent(storeId);
  });

  test('50 concurrent spends with one idempotency key: one transaction, one charge, 50 identical answers', async () => {
    const storeId = await newStore();
    await fund(storeId, 100);
    const body = { service: 'sms', quantity: 2, idempotencyKey: key() };
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        request(server)
          .post(`/api/stores/${storeId}/credits/spend`)
          .set('Authorization', `Bearer ${owner.token}`)
          .send(body),
      ),
    );
    for (const r of results) {
      expect(r.status).toBe(201);
      expect(r.body).toEqual(results[0].body);
    }
    expect(results[0].body.balance).toBe(90);
    expect(
      await countRows(t, 'credit_transactions', 'store_id = :storeId AND idempotency_key = :k', {
        storeId,
        k: body.idempotencyKey,
      }),
    ).toBe(1);
    expect(await balanceOf(storeId)).toBe(90);
    expect(await countRows(t, 'audit_log', `store_id = :storeId AND action = 'credits.spend'`, { storeId })).toBe(1);
    await expectLedgerConsistent(storeId);
  });

  test('concurrent repeats of a spend that takes the last credits all get the first answer, not 402', async () => {
    const storeId = await newStore();
    await fund(storeId, 5);
    const body = { service: 'sms', quantity: 1, idempotencyKey: key() };
    const results = await Promise.all(
      Array.from({ length: 30 }, () =>
        request(server)
          .post(`/api/stores/${storeId}/credits/spend`)
          .set('Authorization', `Bearer ${owner.token}`)
          .send(body),
      ),
    );
    for (const r of results) {
      expect(r.status).toBe(201);
      expect(r.body).toEqual(results[0].body);
    }
    expect(results[0].body.balance).toBe(0);
    expect(await balanceOf(storeId)).toBe(0);
  });

  test('30 concurrent purchases with one key buy once', async () => {
    const storeId = await newStore();
    const body = { amount: 40, idempotencyKey: key() };
    const results = await Promise.all(
      Array.from({ length: 30 }, () =>
        request(server)
          .post(`/api/stores/${storeId}/credits/purchase`)
          .set('Authorization', `Bearer ${owner.token}`)
          .send(body),
      ),
    );
    for (const r of results) {
      expect(r.status).toBe(201);
      expect(r.body).toEqual(results[0].body);
    }
    expect(await balanceOf(storeId)).toBe(40);
    expect(await countRows(t, 'billing_transactions', 'store_id = :storeId', { storeId })).toBe(1);
    await expectLedgerConsistent(storeId);
  });

  test('spends, purchases and adjustments racing on one store keep the ledger exact', async () => {
    const storeId = await newStore();
    await fund(storeId, 30);
    const calls = Array.from({ length: 90 }, (_, i) => {
      const r = request(server);
      if (i % 3 === 0)
        return r
          .post(`/api/stores/${storeId}/credits/purchase`)
          .set('Authorization', `Bearer ${owner.token}`)
          .send({ amount: 2, idempotencyKey: key() });
      if (i % 3 === 1)
        return r
          .post(`/api/stores/${storeId}/credits/spend`)
          .set('Authorization', `Bearer ${staff.token}`)
          .send({ service: 'sms', quantity: 1, idempotencyKey: key() });
      return r
        .post(`/api/admin/stores/${storeId}/credits/adjust`)
        .set('Authorization', `Bearer ${admin.token}`)
        .send({ amount: -3, reason: 'race' });
    });
    const results = await Promise.all(calls);
    for (const r of results) expect([201, 402]).toContain(r.status);
    await expectLedgerConsistent(storeId);
    const expected =
      30 + results.filter((r) => r.status === 201).reduce((sum, r) => sum + (r.body.transaction.amount as number), 0);
    expect(await balanceOf(storeId)).toBe(expected);
  });
});

describe('GET /api/stores/:id/credits', () => {
  test('members see the balance and the transactions newest first, page by page', async () => {
    const storeId = await newStore();
    await fund(storeId, 1000);
    for (let i = 0; i < 24; i++)
      await spend(storeId, { service: 'email', quantity: i + 1, idempotencyKey: `k-${i}` }).expect(201);
    const first = await credits(storeId, staff.token, '?limit=10').expect(200);
    expect(first.body.balance).toBe(1000 - (24 * 25) / 2);
    expect(first.body.transactions.items).toHaveLength(10);
    expect(first.body.transactions.items[0]).toMatchObject({
      type: 'spend',
      quantity: 24,
      balanceAfter: first.body.balance,
    });
    const seen: string[] = first.body.transactions.items.map((i: { id: string }) => i.id);
    let cursor = first.body.transactions.nextCursor as string | null;
    while (cursor) {
      const page = await credits(storeId, owner.token, `?limit=10&cursor=${encodeURIComponent(cursor)}`).expect(200);
      seen.push(...page.body.transactions.items.map((i: { id: string }) => i.id));
      cursor = page.body.transactions.nextCursor;
    }
    expect(seen).toHaveLength(25);
    expect(new Set(seen).size).toBe(25);
    const all = await credits(storeId, owner.token, '?limit=100').expect(200);
    expect(all.body.transactions.items.map((i: { id: string }) => i.id)).toEqual(seen);
    expect(all.body.transactions.items.at(-1)).toMatchObject({ type: 'purchase', amount: 1000 });
    expect(all.body.transactions.nextCursor).toBeNull();
  });

  test('non-members get 403, a bad cursor or limit 400, an unknown store 404', async () => {
    const storeId = await newStore();
    expectProblem(await credits(storeId, outsider.token), 403, 'FORBIDDEN');
    expectProblem(await credits(storeId, owner.token, '?cursor=bogus'), 400, 'VALIDATION_FAILED');
    expectProblem(await credits(storeId, owner.token, '?limit=0'), 400, 'VALIDATION_FAILED');
    expectProblem(await credits(storeId, owner.token, '?limit=101'), 400, 'VALIDATION_FAILED');
    expectProblem(await credits(randomUUID()), 404, 'STORE_NOT_FOUND');
    expectProblem(await api.get(`/api/stores/${storeId}/credits`), 401, 'UNAUTHENTICATED');
  });
});

describe('POST /api/admin/stores/:id/credits/adjust', () => {
  test('a platform admin adds and takes away credits with a reason; it is an adjustment in the ledger and the audit log', async () => {
    const storeId = await newStore();
    const up = await adjust(storeId, { amount: 500, reason: 'Goodwill for the outage' }).expect(201);
    expect(up.body).toEqual({
      transaction: expect.objectContaining({
        type: 'adjustment',
        status: 'completed',
        amount: 500,
        balanceAfter: 500,
        reason: 'Goodwill for the outage',
      }),
      balance: 500,
    });
    const down = await adjust(storeId, { amount: -120, reason: 'Correction' }).expect(201);
    expect(down.body.balance).toBe(380);
    const audit = await master<{ actor_user_id: string; data: { amount: number; reason: string } }>(
      `SELECT actor_user_id, data FROM audit_log WHERE store_id = :storeId AND action = 'credits.adjustment' ORDER BY id`,
      { storeId },
    );
    expect(audit.map((a) => [a.actor_user_id, a.data.amount, a.data.reason])).toEqual([
      [admin.user.id, 500, 'Goodwill for the outage'],
      [admin.user.id, -120, 'Correction'],
    ]);
    // The store's members see it.
    expect((await credits(storeId).expect(200)).body.transactions.items[0]).toMatchObject({
      type: 'adjustment',
      amount: -120,
      reason: 'Correction',
    });
    await expectLedgerConsistent(storeId);
  });

  test('cannot take the balance below 0: 402 INSUFFICIENT_CREDITS and nothing changes', async () => {
    const storeId = await newStore();
    await fund(storeId, 10);
    expectProblem(await adjust(storeId, { amount: -11, reason: 'Too much' }), 402, 'INSUFFICIENT_CREDITS');
    expect(await balanceOf(storeId)).toBe(10);
    await adjust(storeId, { amount: -10, reason: 'All of it' }).expect(201);
    expect(await balanceOf(storeId)).toBe(0);
  });

  test('with an idempotency key a retried adjustment applies once', async () => {
    const storeId = await newStore();
    const body = { amount: 70, reason: 'Migration from the old system', idempotencyKey: key() };
    const first = await adjust(storeId, body).expect(201);
    expect((await adjust(storeId, body).expect(201)).body).toEqual(first.body);
    expect(await balanceOf(storeId)).toBe(70);
    expectProblem(await adjust(storeId, { ...body, amount: 71 }), 409, 'CONFLICT');
  });

  test('is for platform admins only (403 for the store owner), 404 for an unknown store, 400 for a zero, fractional or missing amount or reason', async () => {
    const storeId = await newStore();
    expectProblem(await adjust(storeId, { amount: 100, reason: 'Self-service' }, owner.token), 403, 'FORBIDDEN');
    expectProblem(await adjust(randomUUID(), { amount: 100, reason: 'x' }), 404, 'STORE_NOT_FOUND');
    expectValidationErrors(await adjust(storeId, { amount: 0, reason: 'Nothing' }), ['amount']);
    expectValidationErrors(await adjust(storeId, { amount: 2.5, reason: 'Half' }), ['amount']);
    expectValidationErrors(await adjust(storeId, { reason: 'No amount' }), ['amount']);
    expectValidationErrors(await adjust(storeId, { amount: 5 }), ['reason']);
    expectValidationErrors(await adjust(storeId, { amount: 5, reason: '   ' }), ['reason']);
    expectProblem(await adjust(storeId, { amount: 5, reason: 'x', type: 'purchase' }), 400, 'VALIDATION_FAILED');
    expect(await balanceOf(storeId)).toBe(0);
  });
});

test('the OpenAPI document describes every credits route', async () => {
  const doc = (await api.get('/openapi.json').expect(200)).body as { paths: Record<string, Record<string, unknown>> };
  expect(Object.keys(doc.paths['/api/stores/{id}/credits'])).toEqual(['get']);
  expect(Object.keys(doc.paths['/api/stores/{id}/credits/purchase'])).toEqual(['post']);
  expect(Object.keys(doc.paths['/api/stores/{id}/credits/spend'])).toEqual(['post']);
  expect(Object.keys(doc.paths['/api/credits/costs'])).toEqual(['get']);
  expect(Object.keys(doc.paths['/api/webhooks/stripe'])).toEqual(['post']);
  expect(Object.keys(doc.paths['/api/admin/stores/{id}/credits/adjust'])).toEqual(['post']);
  expect(doc.paths['/api/stores/{id}/credits/spend'].post).toMatchObject({
    responses: { 201: expect.anything(), 402: expect.anything() },
  });
});
