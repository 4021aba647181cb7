import { readdirSync } from 'node:fs';
import pg from 'pg';
import request from 'supertest';
import { migrationsDir } from '../../src/db/migrate';
import { QueueName } from '../../src/queue/queues';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { countRows, eventually } from '../helpers/fixtures';
import { auth, createStoreViaApi, queryWith, storeConnection, waitForProvisioning } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { killAllWorkers, spawnWorker, type WorkerProcess } from '../helpers/worker-process';

/**
 * Provisioning jobs run by separate worker processes (`npm run worker`). A worker process killed in the
 * middle of a job: the job is taken over by another worker process and finishes the store — one database,
 * every migration, one admin — with nothing done twice. And a job that ran while its store was deleted or
 * suspended (and so did nothing) runs again when the store comes back.
 */
// No worker in this process: the jobs run in the worker processes the test starts.
const t = useSuite('provkill');
const workers: WorkerProcess[] = [];
let lock: pg.Client | undefined;

beforeAll(() => {
  // Stopped before the app and its database go.
  t.defer('the worker processes', killAllWorkers);
});

async function provisioningOf(token: string, storeId: string) {
  const res = await request(t.app).get(`/api/stores/${storeId}/provisioning`).set(auth(token)).expect(200);
  return res.body as { state: string; step: string | null; attempts: number; error: string | null };
}

test('a worker killed mid-job: a second worker process picks the job up and finishes the store exactly once', async () => {
  const owner = await registerUser(t.app);
  const store = await createStoreViaApi(t.app, owner.token, { name: 'Survivor' });
  await request(t.app)
    .post(`/api/stores/${store.id}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' })
    .expect(202);

  // Hold the store's row: the job's last step (activate: UPDATE stores) will wait on it.
  lock = await t.pgClient({ connectionString: t.db.url });
  await lock.query('BEGIN');
  await lock.query('SELECT id FROM stores WHERE id = $1 FOR UPDATE', [store.id]);

  const first = spawnWorker(t);
  workers.push(first);
  try {
    await eventually(async () => {
      const p = await provisioningOf(owner.token, store.id);
      if (p.state !== 'running' || p.step !== 'activate') throw new Error(`job is ${p.state} at ${p.step}`);
    }, 25000);
    // Asked on a connection of its own: inside the lock's transaction, pg_stat_activity would be the
    // snapshot taken at its first read and never show the wait that began after it.
    const {
      rows: [{ pid: lockPid }],
    } = await lock.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    await eventually(async () => {
      const { rows } = await adminQuery(
        `SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = '${t.db.name}' AND ${lockPid} = ANY (pg_blocking_pids(pid)) AND query ILIKE 'UPDATE%stores%'`,
      );
      if (rows[0].n < 1) throw new Error('the job does not wait on the store row yet');
    }, 10000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nworker output:\n${first.output()}`);
  }

  expect(await first.kill('SIGKILL')).toBe('SIGKILL');
  await lock.query('ROLLBACK');
  await lock.end();
  lock = undefined;

  // The killed worker's transaction never committed.
  expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('provisioning');
  expect((await t.ctx.master.models.StoreDatabase.findByPk(store.id, { rejectOnEmpty: true })).status).toBe(
    'provisioning',
  );

  const second = spawnWorker(t);
  workers.push(second);
  let done;
  try {
    done = await waitForProvisioning(t.app, owner.token, store.id, 'completed', 25000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nsecond worker output:\n${second.output()}`);
  }
  expect(done).toMatchObject({ state: 'completed', progress: 100, error: null, schemaVersion: 1 });
  const job = await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${store.id}`);
  expect(await job!.getState()).toBe('completed');
  expect(job!.returnvalue).toMatchObject({ schemaVersion: 1 });
  // Taken over from the dead worker (a stalled job), not failed and retried.
  expect(job!.stalledCounter).toBe(1);
  expect(job!.failedReason ?? null).toBeNull();

  expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('active');
  expect(await countRows(t, 'store_databases', 'store_id = :id', { id: store.id })).toBe(1);
  expect(await t.ctx.master.models.StoreDatabase.findByPk(store.id, { raw: true })).toMatchObject({
    status: 'ready',
    schemaVersion: 1,
    lastError: null,
  });

  // Exactly one database for the store…
  const conn = await storeConnection(t, store.id);
  const dbs = await adminQuery(`SELECT datname FROM pg_database WHERE datname LIKE '%${store.id.replace(/-/g, '')}%'`);
  expect(dbs.rows).toEqual([{ datname: conn.database }]);
  // …with every tenant migration recorded once…
  const files = readdirSync(migrationsDir('tenant'))
    .filter((f) => f.endsWith('.sql'))
    .map((f) => parseInt(f, 10));
  const applied = await queryWith<{ id: number }>(conn, 'SELECT id FROM migrations WHERE id > 0 ORDER BY id');
  expect(applied.map((r) => r.id)).toEqual(files);
  // …its own store row, and the owner as its one admin.
  expect(await queryWith(conn, 'SELECT id, name FROM stores')).toEqual([{ id: store.id, name: 'Survivor' }]);
  expect(await queryWith(conn, "SELECT email, platform_user_id FROM users WHERE role = 'admin'")).toEqual([
    { email: owner.user.email, platform_user_id: owner.user.id },
  ]);
  expect(await queryWith(conn, 'SELECT count(*)::int AS n FROM users')).toEqual([{ n: 1 }]);

  // The store serves requests.
  // On the hostname the platform issued it.
  await request(t.app).get('/api/store/info').set('Host', `${store.slug}.localhost`).expect(200);
});

test('a store deleted while its provisioning job waited, then restored, is provisioned by the worker', async () => {
  await killAllWorkers();
  const owner = await registerUser(t.app);
  const store = await createStoreViaApi(t.app, owner.token, { name: 'Second thoughts' });
  await request(t.app)
    .post(`/api/stores/${store.id}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' })
    .expect(202);
  await request(t.app).delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);

  // A worker takes the job while the store is deleted: it leaves the store alone.
  expect(await runJobInNewWorker(store.id)).toEqual({ skipped: 'deleted' });
  expect(
    await adminQuery(`SELECT 1 FROM pg_database WHERE datname LIKE '%${store.id.replace(/-/g, '')}%'`),
  ).toMatchObject({ rowCount: 0 });

  // Restored, it is provisioning again — and the provisioning really happens.
  const restored = await request(t.app).post(`/api/stores/${store.id}/restore`).set(auth(owner.token)).expect(200);
  expect(restored.body.status).toBe('provisioning');
  const done = await waitForProvisioning(t.app, owner.token, store.id, 'completed', 20000);
  expect(done).toMatchObject({ state: 'completed', error: null, schemaVersion: 1 });
  expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('active');
  expect(await queryWith(await storeConnection(t, store.id), 'SELECT id FROM stores')).toEqual([{ id: store.id }]);
});

test('a store suspended while its provisioning job waited, then resumed, is provisioned by the worker', async () => {
  await killAllWorkers();
  const admin = await registerAdmin(t);
  const owner = await registerUser(t.app);
  const store = await createStoreViaApi(t.app, owner.token, { name: 'On hold' });
  await request(t.app)
    .post(`/api/stores/${store.id}/database`)
    .set(auth(owner.token))
    .send({ mode: 'managed' })
    .expect(202);
  await request(t.app).post(`/api/admin/stores/${store.id}/suspend`).set(auth(admin.token)).expect(200);

  expect(await runJobInNewWorker(store.id)).toEqual({ skipped: 'suspended' });

  const resumed = await request(t.app).post(`/api/admin/stores/${store.id}/resume`).set(auth(admin.token)).expect(200);
  expect(resumed.body).toEqual({ id: store.id, status: 'provisioning' });
  const done = await waitForProvisioning(t.app, owner.token, store.id, 'completed', 20000);
  expect(done).toMatchObject({ state: 'completed', error: null, schemaVersion: 1 });
  expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('active');
  expect(await queryWith(await storeConnection(t, store.id), 'SELECT id FROM stores')).toEqual([{ id: store.id }]);
});

/** Start a worker process, wait until it has finished the store's provisioning job, and return its result. */
async function runJobInNewWorker(storeId: string): Promise<unknown> {
  const worker = spawnWorker(t);
  const queue = t.ctx.queues.get(QueueName.provisioning);
  try {
    await eventually(async () => {
      const state = await queue.getJobState(`provision-${storeId}`);
      if (state !== 'completed') throw new Error(`job is ${state}`);
    }, 20000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\nworker output:\n${worker.output()}`);
  }
  return (await queue.getJob(`provision-${storeId}`))!.returnvalue;
}
