import { registerUser } from '../helpers/app';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, createStoreViaApi, waitForProvisioning } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/** The onboarding wizard: its steps for the caller's active store, what makes each done, what may be skipped. */
const t = useSuite('onboarding', { WORKER: 'on' });
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

type Step = { id: string; required: boolean; done: boolean; skipped: boolean };
const ORDER = [
  { id: 'store', required: true },
  { id: 'database', required: true },
  { id: 'payments', required: false },
  { id: 'credits', required: false },
  { id: 'profile', required: true },
];

/** The wizard's state, checked for its shape; `state` maps step id → 'done' | 'skipped' | 'todo'. */
async function wizard(token: string) {
  const res = await api.get('/api/onboarding').set(auth(token)).expect(200);
  const body = res.body as { complete: boolean; storeId: string | null; steps: Step[] };
  expect(Object.keys(body).sort()).toEqual(['complete', 'steps', 'storeId']);
  expect(body.steps.map(({ id, required }) => ({ id, required }))).toEqual(ORDER);
  const state = Object.fromEntries(
    body.steps.map((s) => [s.id, s.done ? (s.skipped ? 'BOTH' : 'done') : s.skipped ? 'skipped' : 'todo']),
  );
  return { complete: body.complete, storeId: body.storeId, state };
}

const skippedInDb = async (storeId: string) =>
  (await t.ctx.master.models.Store.findByPk(storeId, { rejectOnEmpty: true })).onboardingSkipped;

test('a new account sees every step to do, in order, with no store; skipping needs a store first', async () => {
  const user = await registerUser(t.app);
  expect(await wizard(user.token)).toEqual({
    complete: false,
    storeId: null,
    state: { store: 'todo', database: 'todo', payments: 'todo', credits: 'todo', profile: 'todo' },
  });
  expectProblem(await api.post('/api/onboarding/steps/payments/skip').set(auth(user.token)), 409, 'CONFLICT');
});

test('the whole path: store, database done once active, profile, payments done by Stripe keys, credits skipped → complete', async () => {
  const user = await registerUser(t.app);
  // This token was issued before the user had any store.
  const store = await createStoreViaApi(t.app, user.token, { name: 'Wizard Shop' });
  expect(await wizard(user.token)).toEqual({
    complete: false,
    storeId: store.id,
    state: { store: 'done', database: 'todo', payments: 'todo', credits: 'todo', profile: 'todo' },
  });

  // database: done once the store is active, not while it is being provisioned.
  await api.post(`/api/stores/${store.id}/database`).set(auth(user.token)).send({ mode: 'managed' }).expect(202);
  const during = await wizard(user.token);
  const status = (await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status;
  expect(during.state.database).toBe(status === 'active' ? 'done' : 'todo');
  await waitForProvisioning(t.app, user.token, store.id);
  expect((await wizard(user.token)).state.database).toBe('done');

  // profile: a phone alone is not enough; with the company's name it is done.
  await api.patch('/api/auth/profile').set(auth(user.token)).send({ phone: '+49 30 1234567' }).expect(200);
  expect((await wizard(user.token)).state.profile).toBe('todo');
  await api
    .patch('/api/auth/profile')
    .set(auth(user.token))
    .send({ company: { name: 'Wizard GmbH' } })
    .expect(200);
  expect((await wizard(user.token)).state.profile).toBe('done');

  // payments: done once the store has Stripe keys.
  await api
    .put(`/api/stores/${store.id}/integrations/stripe`)
    .set(auth(user.token))
    .send({ publishableKey: 'pk_test_51WizardPublishable', secretKey: 'sk_test_51WizardSecretKey1234' })
    .expect(200);
  const paid = await wizard(user.token);
  expect(paid).toEqual({
    complete: false,
    storeId: store.id,
    state: { store: 'done', database: 'done', payments: 'done', credits: 'todo', profile: 'done' },
  });

  // credits: skipped → the wizard is complete.
  const skipped = await api.post('/api/onboarding/steps/credits/skip').set(auth(user.token)).expect(200);
  expect(skipped.body.complete).toBe(true);
  expect(skipped.body.steps.find((s: Step) => s.id === 'credits')).toEqual({
    id: 'credits',
    required: false,
    done: false,
    skipped: true,
  });
  expect(await wizard(user.token)).toEqual({
    complete: true,
    storeId: store.id,
    state: { store: 'done', database: 'done', payments: 'done', credits: 'skipped', profile: 'done' },
  });
  expect(await skippedInDb(store.id)).toEqual(['credits']);
});

test('skipping payments and credits completes the wizard only once every required step is done', async () => {
  const user = await registerUser(t.app);
  const store = await createStoreViaApi(t.app, user.token);
  for (const step of ['payments', 'credits', 'payments']) {
    const res = await api.post(`/api/onboarding/steps/${step}/skip`).set(auth(user.token)).expect(200);
    expect(res.body.steps.find((s: Step) => s.id === step)).toMatchObject({ done: false, skipped: true });
    expect(res.body.complete).toBe(false);
  }
  // Skipping twice records it once.
  expect(await skippedInDb(store.id)).toEqual(['payments', 'credits']);
  expect((await wizard(user.token)).state).toEqual({
    store: 'done',
    database: 'todo',
    payments: 'skipped',
    credits: 'skipped',
    profile: 'todo',
  });

  await api
    .patch('/api/auth/profile')
    .set(auth(user.token))
    .send({ phone: '0301234567', company: { name: 'Skipper Ltd' } })
    .expect(200);
  expect((await wizard(user.token)).complete).toBe(false);
  await api.post(`/api/stores/${store.id}/database`).set(auth(user.token)).send({ mode: 'managed' }).expect(202);
  await waitForProvisioning(t.app, user.token, store.id);
  expect(await wizard(user.token)).toEqual({
    complete: true,
    storeId: store.id,
    state: { store: 'done', database: 'done', payments: 'skipped', credits: 'skipped', profile: 'done' },
  });

  // A skipped step that gets done shows as done, not skipped.
  await api
    .put(`/api/stores/${store.id}/integrations/stripe`)
    .set(auth(user.token))
    .send({ publishableKey: 'pk_test_51SkipperPublishable', secretKey: 'sk_test_51SkipperSecretKey9999' })
    .expect(200);
  expect((await wizard(user.token)).state.payments).toBe('done');
});

test('required steps cannot be skipped (400 STEP_NOT_SKIPPABLE) and an unknown step is 404; nothing is recorded', async () => {
  const user = await registerUser(t.app);
  const store = await createStoreViaApi(t.app, user.token);
  for (const step of ['store', 'database', 'profile']) {
    expectProblem(
      await api.post(`/api/onboarding/steps/${step}/skip`).set(auth(user.token)),
      400,
      'STEP_NOT_SKIPPABLE',
    );
  }
  expectProblem(await api.post('/api/onboarding/steps/shipping/skip').set(auth(user.token)), 404, 'NOT_FOUND');
  expectProblem(await api.post('/api/onboarding/steps/PAYMENTS/skip').set(auth(user.token)), 404, 'NOT_FOUND');
  expect(await skippedInDb(store.id)).toEqual([]);
  expect((await wizard(user.token)).state).toEqual({
    store: 'done',
    database: 'todo',
    payments: 'todo',
    credits: 'todo',
    profile: 'todo',
  });
  expectProblem(await api.get('/api/onboarding'), 401, 'UNAUTHENTICATED');
});

test("the wizard follows the active store: the token's store when set, else the newest store", async () => {
  const user = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: user.user.id, planId: 'pro' });
  const oldToken = user.token; // issued before any store existed
  const first = await createStoreViaApi(t.app, oldToken, { name: 'First' });
  expect((await wizard(oldToken)).storeId).toBe(first.id);
  const second = await createStoreViaApi(t.app, oldToken, { name: 'Second' });
  expect((await wizard(oldToken)).storeId).toBe(second.id);

  // Skips belong to the store they were made for.
  await api.post('/api/onboarding/steps/credits/skip').set(auth(oldToken)).expect(200);
  expect(await skippedInDb(second.id)).toEqual(['credits']);
  expect(await skippedInDb(first.id)).toEqual([]);

  const switched = await api.post('/api/auth/switch-store').set(auth(oldToken)).send({ storeId: first.id }).expect(200);
  const onFirst = await wizard(switched.body.token);
  expect(onFirst.storeId).toBe(first.id);
  expect(onFirst.state.credits).toBe('todo');

  // The token's store deleted: back to the newest remaining store.
  await api.delete(`/api/stores/${first.id}`).set(auth(oldToken)).expect(202);
  expect((await wizard(switched.body.token)).storeId).toBe(second.id);
});
