import type { Express } from 'express';
import request from 'supertest';
import type { AppContext } from '../../src/app-context';
import { startWorkers, type Workers } from '../../src/worker';
import { registerUser } from '../helpers/app';
import { adminQuery, TEST_SERVER_URL } from '../helpers/db';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, createStoreViaApi, queryWith, storeConnection, waitForProvisioning } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';

/**
 * Managed provisioning against a tenant server that does not answer: the job fails after its attempts,
 * the store is marked provisioning_failed and the owner sees why (without hosts or credentials). Once
 * the server answers again, a retry finishes the store.
 */
let deadPort: number;
const t = useSuite('provfail', async () => {
  deadPort = await freePort();
  return {
    WORKER: 'on',
    TENANT_SERVERS: `postgres://postgres@127.0.0.1:${deadPort}/postgres`,
    PROVISIONING_ATTEMPTS: '2',
  };
});
let api: RecordingClient;
let healthy: { ctx: AppContext; app: Express; workers: Workers } | undefined;
let owner: Awaited<ReturnType<typeof registerUser>>;
let comesBack: string;
let movesAway: string;

beforeAll(async () => {
  api = recordingClient(t.app);
  // Whatever went to the real server through the proxy is not under a server key the app's close() knows.
  t.defer('the databases provisioned through the proxy', async () => {
    const names = (await t.ctx.master.models.StoreDatabase.findAll({ raw: true })).map((d) => d.databaseName!);
    for (const name of names) {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      await adminQuery(`DROP ROLE IF EXISTS "${name}"`);
    }
  });
  owner = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  comesBack = (await createStoreViaApi(t.app, owner.token, { name: 'Comes back' })).id;
  movesAway = (await createStoreViaApi(t.app, owner.token, { name: 'Moves away' })).id;
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

test('a managed database on a server that does not answer: after PROVISIONING_ATTEMPTS the store is provisioning_failed and the owner sees a safe error', async () => {
  for (const id of [comesBack, movesAway]) {
    await api.post(`/api/stores/${id}/database`).set(auth(owner.token)).send({ mode: 'managed' }).expect(202);
  }
  for (const id of [comesBack, movesAway]) {
    const status = await waitForProvisioning(t.app, owner.token, id, 'failed');
    expect(status).toEqual({
      jobId: `provision-${id}`,
      state: 'failed',
      progress: expect.any(Number),
      step: 'create_database',
      attempts: 2,
      error: 'create_database: the database server could not be reached',
      schemaVersion: 0,
    });
    const store = await api.get(`/api/stores/${id}`).set(auth(owner.token)).expect(200);
    expect(store.body).toMatchObject({
      status: 'provisioning_failed',
      database: { mode: 'managed', status: 'failed', schemaVersion: 0 },
    });
    const row = await t.ctx.master.models.StoreDatabase.findByPk(id, { rejectOnEmpty: true });
    expect(row).toMatchObject({ status: 'failed', lastError: status.error, server: `127.0.0.1:${deadPort}` });
    const conn = await storeConnection(t, id);
    for (const secret of [String(deadPort), '127.0.0.1', conn.password, conn.user, 'postgres']) {
      expect(status.error).not.toContain(secret);
    }
  }
  // Nothing was created anywhere.
  const conn = await storeConnection(t, comesBack);
  expect((await adminQuery(`SELECT 1 FROM pg_database WHERE datname = '${conn.database}'`)).rowCount).toBe(0);
  // A store that did not fail cannot be retried.
  const pending = await createStoreViaApi(t.app, owner.token);
  expectProblem(await api.post(`/api/stores/${pending.id}/provisioning/retry`).set(auth(owner.token)), 409, 'CONFLICT');
});

test('once the server answers again on its address, POST …/provisioning/retry finishes the store', async () => {
  // The tenant server "comes back": its address now leads to the real Postgres.
  const real = new URL(TEST_SERVER_URL);
  await t.proxy(deadPort, { host: real.hostname, port: Number(real.port || 5432) });

  const res = await api.post(`/api/stores/${comesBack}/provisioning/retry`).set(auth(owner.token)).expect(202);
  expect(res.body).toEqual({ jobId: `provision-${comesBack}`, status: 'queued' });
  expect((await t.ctx.master.models.Store.findByPk(comesBack, { rejectOnEmpty: true })).status).not.toBe(
    'provisioning_failed',
  );
  const done = await waitForProvisioning(t.app, owner.token, comesBack);
  expect(done).toMatchObject({ state: 'completed', progress: 100, error: null, schemaVersion: 1 });
  expect((await t.ctx.master.models.Store.findByPk(comesBack, { rejectOnEmpty: true })).status).toBe('active');
  expect(await t.ctx.master.models.StoreDatabase.findByPk(comesBack, { raw: true })).toMatchObject({
    status: 'ready',
    lastError: null,
    server: `127.0.0.1:${deadPort}`,
  });

  const conn = await storeConnection(t, comesBack);
  expect(await queryWith({ ...conn, port: Number(real.port || 5432) }, 'SELECT id FROM stores')).toEqual([
    { id: comesBack },
  ]);
  const { slug } = await t.ctx.master.models.Store.findByPk(comesBack, { rejectOnEmpty: true });
  await request(t.app).get('/api/store/info').set('Host', `${slug}.localhost`).expect(200);
});

test('a store whose server was taken out of TENANT_SERVERS: retry cannot succeed, connecting again moves it to a configured server', async () => {
  // Another deployment on the same master (its own queues and worker), configured with the real server only.
  const instance = await t.instance(
    { TENANT_SERVERS: TEST_SERVER_URL, PROVISIONING_ATTEMPTS: '1' },
    { redisPrefix: `${t.ctx.redisPrefix}:other` },
  );
  healthy = {
    ...instance,
    workers: await t.open(
      'the healthy worker',
      () => startWorkers(instance.ctx),
      (w) => w.close(),
    ),
  };

  // The failed store keeps its server's key, which this instance does not know: the retried job fails again.
  await request(healthy.app).post(`/api/stores/${movesAway}/provisioning/retry`).set(auth(owner.token)).expect(202);
  const again = await waitForProvisioning(healthy.app, owner.token, movesAway, 'failed');
  expect(again).toMatchObject({ state: 'failed', attempts: 1, error: 'create_database: failed' });
  expect(again.error).not.toContain(String(deadPort));
  expect((await t.ctx.master.models.Store.findByPk(movesAway, { rejectOnEmpty: true })).status).toBe(
    'provisioning_failed',
  );

  // Connecting the managed database again picks a server that is configured.
  await request(healthy.app)
    .post(`/api/stores/${movesAway}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' })
    .expect(202);
  await waitForProvisioning(healthy.app, owner.token, movesAway);
  const row = await t.ctx.master.models.StoreDatabase.findByPk(movesAway, { rejectOnEmpty: true });
  const real = new URL(TEST_SERVER_URL);
  expect(row).toMatchObject({ status: 'ready', server: `${real.hostname}:${real.port || 5432}` });
  expect((await t.ctx.master.models.Store.findByPk(movesAway, { rejectOnEmpty: true })).status).toBe('active');
  expect(await queryWith(await storeConnection(t, movesAway), 'SELECT id FROM stores')).toEqual([{ id: movesAway }]);
});
