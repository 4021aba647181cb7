import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { QueryTypes } from 'sequelize';
import Stripe from 'stripe';
import request from 'supertest';
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

const SECRET = 'whsec_test_credits_0123456789abcdef';

const t = useSuite('credits_stripe', { PAYMENTS_PROVIDER: 'stripe', STRIPE_WEBHOOK_SECRET: SECRET });
let server: Server;
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  server = t.listen();
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const key = () => randomUUID();
const newStore = async () => (await insertStore(t, owner.user.id)).id;
const purchase = (storeId: string, body: object) =>
  api.post(`/api/stores/${storeId}/credits/purchase`).set('Authorization', `Bearer ${owner.token}`).send(body);
const credits = (storeId: string) =>
  api.get(`/api/stores/${storeId}/credits`).set('Authorization', `Bearer ${owner.token}`);

async function balanceOf(storeId: string): Promise<number> {
  const rows = await t.ctx.master.sequelize.query<{ balance: string }>(
    'SELECT balance FROM credit_balances WHERE store_id = :storeId',
    {
      replacements: { storeId },
      type: QueryTypes.SELECT,
    },
  );
  return rows.length ? Number(rows[0].balance) : 0;
}

interface Payment {
  reference: string;
  amountCents: number;
}

/** The event Stripe sends when a PaymentIntent made with our reference in its metadata succeeds. */
function paymentSucceeded(payment: Payment, overrides: Record<string, unknown> = {}) {
  return {
    id: `evt_${randomUUID().replace(/-/g, '')}`,
    object: 'event',
    type: 'payment_intent.succeeded',
    data: {
      object: {
        id: `pi_${randomUUID().replace(/-/g, '').slice(0, 24)}`,
        object: 'payment_intent',
        amount: payment.amountCents,
        amount_received: payment.amountCents,
        currency: 'eur',
        status: 'succeeded',
        metadata: { tenantry_reference: payment.reference },
        ...overrides,
      },
    },
  };
}

/** Deliver an event as Stripe does: the JSON body and its Stripe-Signature header. */
function deliver(
  event: object,
  options: { secret?: string; timestamp?: number; signature?: string | null; body?: string } = {},
) {
  const payload = options.body ?? JSON.stringify(event);
  const header =
    options.signature === undefined
      ? Stripe.webhooks.generateTestHeaderString({
          payload: JSON.stringify(event),
          secret: options.secret ?? SECRET,
          timestamp: options.timestamp,
        })
      : options.signature;
  const req = request(server).post('/api/webhooks/stripe').set('Content-Type', 'application/json; charset=utf-8');
  if (header !== null) req.set('Stripe-Signature', header);
  return req.send(payload);
}

async function pendingPurchase(storeId: string, amount = 500) {
  const res = await purchase(storeId, { amount, idempotencyKey: key() }).expect(201);
  return res.body as {
    transaction: { id: string; status: string; balanceAfter: number | null };
    balance: number;
    payment: Payment & { provider: string; status: string; currency: string };
  };
}

test('a purchase with the stripe provider is pending: balance unchanged, the payment reference to pay with is returned', async () => {
  const storeId = await newStore();
  const res = await purchase(storeId, { amount: 500, idempotencyKey: key() }).expect(201);
  expect(res.body).toEqual({
    transaction: expect.objectContaining({ type: 'purchase', status: 'pending', amount: 500, balanceAfter: null }),
    balance: 0,
    payment: {
      provider: 'stripe',
      reference: expect.stringMatching(/^tnry_pay_[0-9a-f]{24}$/),
      amountCents: 500,
      currency: 'EUR',
      status: 'pending',
    },
  });
  expect(await balanceOf(storeId)).toBe(0);
  const billing = await t.ctx.master.models.BillingTransaction.findAll({ where: { storeId }, raw: true });
  expect(billing).toEqual([
    expect.objectContaining({
      provider: 'stripe',
      providerRef: res.body.payment.reference,
      status: 'pending',
      amountCents: 500,
      creditTransactionId: res.body.transaction.id,
    }),
  ]);
  expect((await credits(storeId).expect(200)).body).toMatchObject({
    balance: 0,
    transactions: { items: [{ id: res.body.transaction.id, status: 'pending', balanceAfter: null }] },
  });
});

test('a signed payment_intent.succeeded completes the purchase once, even when delivered three times', async () => {
  const storeId = await newStore();
  const { transaction, payment } = await pendingPurchase(storeId, 500);
  const event = paymentSucceeded(payment);
  const first = await deliver(event).expect(200);
  expect(first.body).toEqual({ received: true });
  for (let i = 0; i < 2; i++) {
    const again = await deliver(event).expect(200);
    expect(again.body).toEqual({ received: true, ignored: true, reason: expect.stringContaining('already processed') });
  }
  expect(await balanceOf(storeId)).toBe(500);
  const rows = await t.ctx.master.models.CreditTransaction.findAll({ where: { storeId }, raw: true });
  expect(rows).toEqual([expect.objectContaining({ id: transaction.id, status: 'completed', balanceAfter: '500' })]);
  const billing = await t.ctx.master.models.BillingTransaction.findOne({ where: { storeId }, rejectOnEmpty: true });
  expect(billing.status).toBe('succeeded');
  expect(
    await countRows(t, 'audit_log', `store_id = :storeId AND action = 'credits.purchase.completed'`, { storeId }),
  ).toBe(1);
  expect((await credits(storeId).expect(200)).body).toMatchObject({
    balance: 500,
    transactions: { items: [{ id: transaction.id, status: 'completed', balanceAfter: 500 }] },
  });
});

test('three deliveries of the same event at the same moment complete the purchase once', async () => {
  const storeId = await newStore();
  await pendingPurchase(storeId, 300);
  const { payment } = await pendingPurchase(storeId, 200);
  const event = paymentSucceeded(payment);
  const answers = await Promise.all([deliver(event), deliver(event), deliver(event)]);
  for (const a of answers) expect(a.status).toBe(200);
  expect(answers.filter((a) => a.body.ignored === undefined)).toHaveLength(1);
  expect(await balanceOf(storeId)).toBe(200);
  expect(await countRows(t, 'credit_transactions', `store_id = :storeId AND status = 'completed'`, { storeId })).toBe(
    1,
  );
  expect(await countRows(t, 'credit_transactions', `store_id = :storeId AND status = 'pending'`, { storeId })).toBe(1);
});

test('a bad, missing, foreign-secret, stale or tampered signature is 400 and changes nothing', async () => {
  const storeId = await newStore();
  const { payment } = await pendingPurchase(storeId, 100);
  const event = paymentSucceeded(payment);
  expectProblem(await deliver(event, { signature: 't=123,v1=deadbeef' }), 400, 'VALIDATION_FAILED');
  expectProblem(await deliver(event, { signature: null }), 400, 'VALIDATION_FAILED');
  expectProblem(await deliver(event, { secret: 'whsec_someone_else' }), 400, 'VALIDATION_FAILED');
  expectProblem(await deliver(event, { timestamp: Math.floor(Date.now() / 1000) - 3600 }), 400, 'VALIDATION_FAILED');
  // Signed for one body, sent with another (a larger amount).
  const tampered = JSON.stringify(paymentSucceeded({ ...payment, amountCents: 1_000_000 }));
  expectProblem(await deliver(event, { body: tampered }), 400, 'VALIDATION_FAILED');
  expect(await balanceOf(storeId)).toBe(0);
  expect(await countRows(t, 'credit_transactions', `store_id = :storeId AND status = 'pending'`, { storeId })).toBe(1);
});

test('an event for a purchase we do not know, or of another type, is answered 200 and ignored', async () => {
  const unknown = await deliver(
    paymentSucceeded({ reference: 'tnry_pay_000000000000000000000000', amountCents: 100 }),
  ).expect(200);
  expect(unknown.body).toEqual({ received: true, ignored: true, reason: expect.any(String) });
  const other = await deliver({
    id: 'evt_1',
    object: 'event',
    type: 'customer.created',
    data: { object: { id: 'cus_1', object: 'customer' } },
  }).expect(200);
  expect(other.body).toEqual({ received: true, ignored: true, reason: expect.stringContaining('customer.created') });
});

test('a payment for less than the purchase, or in another currency, does not complete it', async () => {
  const storeId = await newStore();
  const { payment } = await pendingPurchase(storeId, 100);
  const less = await deliver(paymentSucceeded(payment, { amount_received: 99 })).expect(200);
  expect(less.body).toMatchObject({ received: true, ignored: true });
  await deliver(paymentSucceeded(payment, { currency: 'usd' })).expect(200);
  expect(await balanceOf(storeId)).toBe(0);
  expect(
    await countRows(t, 'audit_log', `store_id = :storeId AND action = 'credits.purchase.payment_rejected'`, {
      storeId,
    }),
  ).toBe(2);
  // The right payment still completes it.
  expect((await deliver(paymentSucceeded(payment)).expect(200)).body).toEqual({ received: true });
  expect(await balanceOf(storeId)).toBe(100);
});

test('checkout.session.completed completes the purchase named by client_reference_id once it is paid', async () => {
  const storeId = await newStore();
  const { payment } = await pendingPurchase(storeId, 750);
  const session = (paymentStatus: string) => ({
    id: `evt_${randomUUID().replace(/-/g, '')}`,
    object: 'event',
    type: 'checkout.session.completed',
    data: {
      object: {
        id: 'cs_test_1',
        object: 'checkout.session',
        client_reference_id: payment.reference,
        amount_total: 750,
        currency: 'eur',
        payment_status: paymentStatus,
        metadata: {},
      },
    },
  });
  expect((await deliver(session('unpaid')).expect(200)).body).toMatchObject({ ignored: true });
  expect(await balanceOf(storeId)).toBe(0);
  expect((await deliver(session('paid')).expect(200)).body).toEqual({ received: true });
  expect(await balanceOf(storeId)).toBe(750);
});

test('a repeated purchase request returns the same purchase, pending and later completed; the credits step is done only once it is paid', async () => {
  const solo = await registerUser(t.app);
  const created = await api
    .post('/api/stores')
    .set('Authorization', `Bearer ${solo.token}`)
    .send({ name: 'Solo', slug: `solo-${Date.now().toString(36)}` })
    .expect(201);
  const storeId = created.body.id as string;
  const body = { amount: 60, idempotencyKey: key() };
  const buy = () =>
    api.post(`/api/stores/${storeId}/credits/purchase`).set('Authorization', `Bearer ${solo.token}`).send(body);
  const step = async () =>
    (
      (await api.get('/api/onboarding').set('Authorization', `Bearer ${solo.token}`).expect(200)).body.steps as {
        id: string;
        done: boolean;
      }[]
    ).find((s) => s.id === 'credits');

  const first = await buy().expect(201);
  expect((await buy().expect(201)).body).toEqual(first.body);
  expect(await step()).toMatchObject({ done: false });

  await deliver(paymentSucceeded(first.body.payment)).expect(200);
  const later = await buy().expect(201);
  expect(later.body.transaction).toEqual({ ...first.body.transaction, status: 'completed', balanceAfter: 60 });
  expect(later.body.balance).toBe(60);
  expect(later.body.payment).toEqual({ ...first.body.payment, status: 'succeeded' });
  expect(await step()).toMatchObject({ done: true });
  expect(await countRows(t, 'billing_transactions', 'store_id = :storeId', { storeId })).toBe(1);
});

test('card purchases buy at least 50 credits (Stripe charges at least €0.50)', async () => {
  const storeId = await newStore();
  expectValidationErrors(await purchase(storeId, { amount: 49, idempotencyKey: key() }), ['amount']);
  await purchase(storeId, { amount: 50, idempotencyKey: key() }).expect(201);
});

test('a webhook body over 100 kB is 413, a signed body that is not JSON 400', async () => {
  const big = 'x'.repeat(101 * 1024);
  expectProblem(
    await request(server)
      .post('/api/webhooks/stripe')
      .set('Content-Type', 'application/json')
      .set('Stripe-Signature', 't=1,v1=00')
      .send(big),
    413,
    'PAYLOAD_TOO_LARGE',
  );
  const payload = '{"id": "evt_1", "object": ';
  const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET });
  expectProblem(
    await request(server)
      .post('/api/webhooks/stripe')
      .set('Content-Type', 'application/json')
      .set('Stripe-Signature', header)
      .send(payload),
    400,
    'MALFORMED_JSON',
  );
});
