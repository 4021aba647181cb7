import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { settleSubscriptionPeriods } from '../../src/subscriptions/subscriptions.service';
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
import { auth, createStoreViaApi, uniqueSlug } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery } from '../helpers/tenants';

/** Plans and subscriptions with the manual payments provider: a change applies at once. */
const t = useSuite('subscriptions', { PAYMENTS_PROVIDER: 'manual' });
type User = Awaited<ReturnType<typeof registerUser>>;
let api: RecordingClient;
let admin: User;

beforeAll(async () => {
  api = recordingClient(t.app);
  admin = await registerAdmin(t);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

async function balanceOf(storeId: string): Promise<number> {
  const rows = await t.ctx.master.sequelize.query<{ balance: string }>(
    'SELECT balance::text AS balance FROM credit_balances WHERE store_id = $1::uuid',
    { bind: [storeId], type: QueryTypes.SELECT },
  );
  return rows.length ? Number(rows[0].balance) : 0;
}

const subscribe = (user: User, planId: string) => api.post('/api/subscription').set(auth(user.token)).send({ planId });

test('GET /api/plans lists every plan with its limits (null: unlimited), price and included credits, without a token', async () => {
  const res = await api.get('/api/plans').expect(200);
  const byId = Object.fromEntries((res.body.items as { id: string }[]).map((p) => [p.id, p]));
  expect(byId.free).toEqual({
    id: 'free',
    name: 'Free',
    limits: { stores: 1, products: 100, staff: 2, hostnames: 2, storageMb: 250 },
    monthlyPriceCents: 0,
    includedCredits: 0,
  });
  expect(byId.pro).toMatchObject({
    limits: { stores: 5, products: 10000, staff: 20, hostnames: 10, storageMb: 10240 },
    monthlyPriceCents: 4900,
    includedCredits: 1000,
  });
  expect(byId.agency).toMatchObject({
    limits: { stores: 100, products: null, staff: null, hostnames: null, storageMb: null },
  });
});

test('an account without a subscription is on the free plan, with its usage', async () => {
  const user = await registerUser(t.app);
  await insertStore(t, user.user.id);
  const res = await api.get('/api/subscription').set(auth(user.token)).expect(200);
  expect(res.body).toEqual({
    plan: expect.objectContaining({ id: 'free' }),
    status: 'active',
    subscribedPlanId: 'free',
    provider: null,
    currentPeriodEnd: null,
    pending: null,
    usage: { stores: 1, products: 0, staff: 0, hostnames: 0, storageMb: 0 },
  });
  expectProblem(await api.get('/api/subscription'), 401, 'UNAUTHENTICATED');
});

test('an upgrade with the manual provider applies at once (200): limits, credits granted once, audit', async () => {
  const user = await registerUser(t.app);
  const first = await createStoreViaApi(t.app, user.token);
  expectProblem(
    await api.post('/api/stores').set(auth(user.token)).send({ name: 'Two', slug: uniqueSlug() }),
    403,
    'PLAN_LIMIT_REACHED',
  );

  const res = await subscribe(user, 'pro').expect(200);
  expect(res.body).toMatchObject({
    plan: { id: 'pro' },
    status: 'active',
    subscribedPlanId: 'pro',
    provider: 'manual',
    currentPeriodEnd: expect.any(String),
    pending: null,
  });
  expect(new Date(res.body.currentPeriodEnd).getTime()).toBeGreaterThan(Date.now() + 27 * 86400_000);
  // The included credits go to the account's store, once for the period however often the plan is asked for.
  expect(await balanceOf(first.id)).toBe(1000);
  await subscribe(user, 'pro').expect(200);
  expect(await balanceOf(first.id)).toBe(1000);
  expect(await countRows(t, 'credit_transactions', `store_id = :id AND type = 'adjustment'`, { id: first.id })).toBe(1);
  expect(
    await countRows(
      t,
      'audit_log',
      `action = 'subscription.plan_changed' AND target_id = :id AND actor_user_id = :id`,
      {
        id: user.user.id,
      },
    ),
  ).toBe(1);

  await createStoreViaApi(t.app, user.token);
  // An upgrade within the period tops the grant up to the bigger plan's credits.
  await subscribe(user, 'agency').expect(200);
  expect(await balanceOf(first.id)).toBe(5000);
});

test('a downgrade below current usage is refused with 409 PLAN_LIMIT_EXCEEDED listing what is over', async () => {
  const user = await registerUser(t.app);
  await subscribe(user, 'pro').expect(200);
  const a = await createActiveStore(t, { ownerId: user.user.id });
  await createStoreViaApi(t.app, user.token);
  for (let i = 0; i < 3; i++)
    await tenantQuery(a, `INSERT INTO users (email, password_hash, name, role) VALUES ($1, 'x', 'Staff', 'staff')`, [
      `staff-${i}@example.test`,
    ]);
  await tenantQuery(
    a,
    `INSERT INTO products (sku, name, price_cents) SELECT 'sku-' || i, 'Product', 1 FROM generate_series(1, 101) i`,
  );
  await t.ctx.master.models.StoreHostname.bulkCreate(
    ['a.over.test', 'b.over.test', 'c.over.test'].map((hostname) => ({
      hostname,
      storeId: a.id,
      kind: 'custom' as const,
      status: 'pending' as const,
      verificationToken: 'token',
    })),
  );

  const res = await subscribe(user, 'free');
  expectProblem(res, 409, 'PLAN_LIMIT_EXCEEDED');
  expect(res.body.over).toEqual(
    expect.arrayContaining([
      { resource: 'stores', limit: 1, count: 2, storeId: null },
      { resource: 'staff', limit: 2, count: 3, storeId: a.id },
      { resource: 'hostnames', limit: 2, count: 3, storeId: a.id },
      { resource: 'products', limit: 100, count: 101, storeId: a.id },
    ]),
  );
  expect(res.body.over).toHaveLength(4);
  const after = await api.get('/api/subscription').set(auth(user.token)).expect(200);
  expect(after.body).toMatchObject({
    plan: { id: 'pro' },
    usage: { stores: 2, staff: 3, hostnames: 3, products: 101 },
  });
});

test('an unknown plan is 404, a body with anything else 400', async () => {
  const user = await registerUser(t.app);
  expectProblem(await subscribe(user, 'platinum'), 404, 'NOT_FOUND');
  expectValidationErrors(await api.post('/api/subscription').set(auth(user.token)).send({ planId: 'pro', extra: 1 }), [
    'extra',
  ]);
  expectValidationErrors(await api.post('/api/subscription').set(auth(user.token)).send({}), ['planId']);
});

test('a platform admin sets an account plan at once; others are refused', async () => {
  const user = await registerUser(t.app);
  const store = await insertStore(t, user.user.id);
  expectProblem(
    await api.put(`/api/admin/users/${user.user.id}/plan`).set(auth(user.token)).send({ planId: 'agency' }),
    403,
    'FORBIDDEN',
  );
  const res = await api
    .put(`/api/admin/users/${user.user.id}/plan`)
    .set(auth(admin.token))
    .send({ planId: 'agency' })
    .expect(200);
  expect(res.body).toMatchObject({ plan: { id: 'agency' }, status: 'active', subscribedPlanId: 'agency' });
  expect(await balanceOf(store.id)).toBe(5000);
  const [row] = await t.ctx.master.models.AuditLog.findAll({
    where: { action: 'subscription.plan_changed', targetId: user.user.id },
    raw: true,
  });
  expect(row).toMatchObject({
    actorUserId: admin.user.id,
    data: expect.objectContaining({ to: { planId: 'agency', status: 'active' } }),
  });
  expectProblem(
    await api
      .put('/api/admin/users/00000000-0000-4000-8000-000000000000/plan')
      .set(auth(admin.token))
      .send({ planId: 'pro' }),
    404,
    'NOT_FOUND',
  );
});

test('a cancelled or past-due subscription falls back to the free limits, deleting nothing', async () => {
  const user = await registerUser(t.app);
  await subscribe(user, 'pro').expect(200);
  await createStoreViaApi(t.app, user.token);
  await createStoreViaApi(t.app, user.token);
  for (const status of ['past_due', 'canceled']) {
    await t.ctx.master.models.Subscription.update(
      { status: status as 'past_due' },
      { where: { userId: user.user.id } },
    );
    const res = await api.get('/api/subscription').set(auth(user.token)).expect(200);
    expect(res.body).toMatchObject({ plan: { id: 'free' }, status, usage: { stores: 2 } });
    expectProblem(
      await request(t.app).post('/api/stores').set(auth(user.token)).send({ name: 'Three', slug: uniqueSlug() }),
      403,
      'PLAN_LIMIT_REACHED',
    );
    expect((await api.get('/api/stores').set(auth(user.token)).expect(200)).body.items).toHaveLength(2);
  }
});

test('the maintenance sweep starts the next manual period with its credits, and gives credits an account had no store for', async () => {
  const renewing = await registerUser(t.app);
  const store = await insertStore(t, renewing.user.id);
  await subscribe(renewing, 'pro').expect(200);
  expect(await balanceOf(store.id)).toBe(1000);
  // The period ended (35 days ago it began).
  await t.ctx.master.sequelize.query(
    `UPDATE subscriptions SET current_period_start = now() - interval '35 days', current_period_end = now() - interval '5 days'
      WHERE user_id = $1::uuid`,
    { bind: [renewing.user.id] },
  );
  const storeless = await registerUser(t.app);
  await subscribe(storeless, 'pro').expect(200);
  const later = await insertStore(t, storeless.user.id);
  expect(await balanceOf(later.id)).toBe(0);

  const result = await settleSubscriptionPeriods(t.ctx);
  expect(result.renewed).toBeGreaterThanOrEqual(1);
  expect(await balanceOf(store.id)).toBe(2000);
  expect(await balanceOf(later.id)).toBe(1000);
  const sub = await t.ctx.master.models.Subscription.findOne({
    where: { userId: renewing.user.id },
    rejectOnEmpty: true,
  });
  expect(sub.currentPeriodEnd!.getTime()).toBeGreaterThan(Date.now());
  expect(sub.currentPeriodStart!.getTime()).toBeLessThanOrEqual(Date.now());

  // Once settled, a second sweep changes nothing.
  await settleSubscriptionPeriods(t.ctx);
  expect(await balanceOf(store.id)).toBe(2000);
  expect(await balanceOf(later.id)).toBe(1000);
});
