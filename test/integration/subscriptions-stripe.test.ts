import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { QueryTypes } from 'sequelize';
import Stripe from 'stripe';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import { countRows, insertStore } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, uniqueSlug } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/** Plan changes paid through Stripe: pending until the signed subscription webhook confirms them, once. */
const SECRET = 'whsec_test_subscriptions_0123456789abcdef';
const t = useSuite('subscriptions_stripe', { PAYMENTS_PROVIDER: 'stripe', STRIPE_WEBHOOK_SECRET: SECRET });
type User = Awaited<ReturnType<typeof registerUser>>;
let server: Server;
let api: RecordingClient;

beforeAll(() => {
  server = t.listen();
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

async function balanceOf(storeId: string): Promise<number> {
  const rows = await t.ctx.master.sequelize.query<{ balance: string }>(
    'SELECT balance::text AS balance FROM credit_balances WHERE store_id = $1::uuid',
    { bind: [storeId], type: QueryTypes.SELECT },
  );
  return rows.length ? Number(rows[0].balance) : 0;
}

const DAY = 86400;
const now = () => Math.floor(Date.now() / 1000);

/** A customer.subscription.* event as Stripe sends it for the subscription our checkout created. */
function subscriptionEvent(
  type: 'updated' | 'deleted' | 'created',
  sub: { id: string; reference: string; plan: string; status: string; periodStart: number },
  created = now(),
) {
  return {
    id: `evt_${randomUUID().replace(/-/g, '')}`,
    object: 'event',
    type: `customer.subscription.${type}`,
    created,
    data: {
      object: {
        id: sub.id,
        object: 'subscription',
        status: sub.status,
        metadata: { tenantry_reference: sub.reference, tenantry_plan: sub.plan },
        items: {
          object: 'list',
          data: [
            {
              id: 'si_1',
              current_period_start: sub.periodStart,
              current_period_end: sub.periodStart + 30 * DAY,
              price: { id: 'price_1', lookup_key: sub.plan },
            },
          ],
        },
      },
    },
  };
}

function deliver(event: object) {
  const payload = JSON.stringify(event);
  return request(server)
    .post('/api/webhooks/stripe')
    .set('Content-Type', 'application/json')
    .set('Stripe-Signature', Stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET }))
    .send(payload);
}

const subscription = async (user: User) => (await api.get('/api/subscription').set(auth(user.token)).expect(200)).body;

async function pendingUpgrade(user: User, planId = 'pro') {
  const res = await api.post('/api/subscription').set(auth(user.token)).send({ planId }).expect(202);
  return res.body.pending as { planId: string; reference: string };
}

test('with Stripe an upgrade is pending (202) and the plan in force does not change until the webhook', async () => {
  const user = await registerUser(t.app);
  const res = await api.post('/api/subscription').set(auth(user.token)).send({ planId: 'pro' }).expect(202);
  expect(res.body).toMatchObject({
    plan: { id: 'free' },
    subscribedPlanId: 'free',
    pending: {
      planId: 'pro',
      reference: expect.stringMatching(/^tnry_sub_[0-9a-f]{24}$/),
      requestedAt: expect.any(String),
    },
  });
  // Asking again replaces the pending change.
  const again = await pendingUpgrade(user, 'agency');
  expect(again.reference).not.toBe(res.body.pending.reference);
  expect(
    await countRows(t, 'subscription_requests', `user_id = :id AND status = 'pending'`, { id: user.user.id }),
  ).toBe(1);
});

test('a signed customer.subscription.updated delivered three times applies the plan once and grants its credits once', async () => {
  const user = await registerUser(t.app);
  const store = await insertStore(t, user.user.id);
  const { reference } = await pendingUpgrade(user);
  const sub = { id: `sub_${randomUUID().slice(0, 8)}`, reference, plan: 'pro', status: 'active', periodStart: now() };
  const event = subscriptionEvent('updated', sub);

  expect((await deliver(event).expect(200)).body).toEqual({ received: true });
  for (let i = 0; i < 2; i++)
    expect((await deliver(event).expect(200)).body).toEqual({
      received: true,
      ignored: true,
      reason: expect.stringContaining('already processed'),
    });
  expect(await subscription(user)).toMatchObject({
    plan: { id: 'pro' },
    status: 'active',
    provider: 'stripe',
    pending: null,
    currentPeriodEnd: new Date((sub.periodStart + 30 * DAY) * 1000).toISOString(),
  });
  expect(await balanceOf(store.id)).toBe(1000);
  expect(await countRows(t, 'credit_transactions', `store_id = :id`, { id: store.id })).toBe(1);
  expect(
    await countRows(t, 'audit_log', `action = 'subscription.plan_changed' AND target_id = :id`, { id: user.user.id }),
  ).toBe(1);

  // Another event of the same period (Stripe sends several) grants nothing more; the next period grants again.
  await deliver(subscriptionEvent('updated', sub)).expect(200);
  expect(await balanceOf(store.id)).toBe(1000);
  await deliver(subscriptionEvent('updated', { ...sub, periodStart: sub.periodStart + 30 * DAY }, now() + 1)).expect(
    200,
  );
  expect(await balanceOf(store.id)).toBe(2000);
  // An event older than the last one applied changes nothing.
  const stale = await deliver(subscriptionEvent('updated', { ...sub, status: 'past_due' }, now() - 60)).expect(200);
  expect(stale.body).toMatchObject({ ignored: true, reason: expect.stringContaining('newer event') });
  expect((await subscription(user)).status).toBe('active');
});

test('three deliveries of one event at the same moment apply it once', async () => {
  const user = await registerUser(t.app);
  const store = await insertStore(t, user.user.id);
  const { reference } = await pendingUpgrade(user, 'agency');
  const event = subscriptionEvent('created', {
    id: `sub_${randomUUID().slice(0, 8)}`,
    reference,
    plan: 'agency',
    status: 'active',
    periodStart: now(),
  });
  const answers = await Promise.all([deliver(event), deliver(event), deliver(event)]);
  expect(answers.map((a) => a.status)).toEqual([200, 200, 200]);
  expect(answers.filter((a) => a.body.ignored === undefined)).toHaveLength(1);
  expect(await balanceOf(store.id)).toBe(5000);
  expect((await subscription(user)).plan.id).toBe('agency');
});

test('past due, then deleted: the free limits apply and nothing is deleted', async () => {
  const user = await registerUser(t.app);
  await insertStore(t, user.user.id);
  const { reference } = await pendingUpgrade(user);
  const sub = { id: `sub_${randomUUID().slice(0, 8)}`, reference, plan: 'pro', status: 'active', periodStart: now() };
  await deliver(subscriptionEvent('updated', sub, now() - 10)).expect(200);
  await api.post('/api/stores').set(auth(user.token)).send({ name: 'Two', slug: uniqueSlug() }).expect(201);

  await deliver(subscriptionEvent('updated', { ...sub, status: 'past_due' }, now() - 5)).expect(200);
  expect(await subscription(user)).toMatchObject({
    plan: { id: 'free' },
    status: 'past_due',
    subscribedPlanId: 'pro',
    usage: { stores: 2 },
  });
  expectProblem(
    await api.post('/api/stores').set(auth(user.token)).send({ name: 'Three', slug: uniqueSlug() }),
    403,
    'PLAN_LIMIT_REACHED',
  );

  await deliver(subscriptionEvent('deleted', { ...sub, status: 'canceled' })).expect(200);
  expect(await subscription(user)).toMatchObject({ plan: { id: 'free' }, status: 'canceled', usage: { stores: 2 } });
  expect((await api.get('/api/stores').set(auth(user.token)).expect(200)).body.items).toHaveLength(2);
  // A late event of the cancelled subscription does not bring it back.
  const late = await deliver(subscriptionEvent('updated', sub, now() + 5)).expect(200);
  expect(late.body.ignored).toBe(true);
  expect((await subscription(user)).plan.id).toBe('free');
});

test('an unsigned subscription event is 400; one for an unknown subscription is acknowledged and ignored', async () => {
  const event = subscriptionEvent('updated', {
    id: 'sub_unknown',
    reference: 'tnry_sub_000000000000000000000000',
    plan: 'pro',
    status: 'active',
    periodStart: now(),
  });
  expectProblem(
    await request(server).post('/api/webhooks/stripe').set('Stripe-Signature', 't=1,v1=00').send(event),
    400,
    'VALIDATION_FAILED',
  );
  expect((await deliver(event).expect(200)).body).toEqual({
    received: true,
    ignored: true,
    reason: expect.stringContaining('no account'),
  });
});
