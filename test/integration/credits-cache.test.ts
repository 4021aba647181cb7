import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { withClient } from '../../src/db/pg-client';
import { ident } from '../../src/db/tenant-server-admin';
import { SYNC_BATCH } from '../../src/credits/credit-sync';
import { QueueName } from '../../src/queue/queues';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { adminQuery, urlFor } from '../helpers/db';
import { eventually, insertStore } from '../helpers/fixtures';
import { useSuite } from '../helpers/suite';
import { createActiveStore, type TestStore } from '../helpers/tenants';

/**
 * The copy of a store's credits in its own database (credit_balance_cache, credit_spending_log), kept up to
 * date by the credit-sync job from the master, which stays the source of truth.
 */

const t = useSuite('credits_cache', { WORKER: 'on', TENANT_FENCE_MS: '300', CREDIT_SYNC_DELAY_MS: '200' });
let server: Server;
let owner: Awaited<ReturnType<typeof registerUser>>;
let admin: Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  server = t.listen();
  [owner, admin] = await Promise.all([registerUser(t.app), registerAdmin(t)]);
});

const key = () => randomUUID();
const post = (path: string, body: object, token = owner.token) =>
  request(server).post(path).set('Authorization', `Bearer ${token}`).send(body);
const purchase = (storeId: string, amount: number) =>
  post(`/api/stores/${storeId}/credits/purchase`, { amount, idempotencyKey: key() });
const spend = (storeId: string, service: string, quantity: number) =>
  post(`/api/stores/${storeId}/credits/spend`, { service, quantity, idempotencyKey: key() });

interface LedgerCopy {
  balance: number;
  lastTransactionAt: string | null;
  rows: {
    id: string;
    type: string;
    service: string | null;
    quantity: number | null;
    amount: number;
    balanceAfter: number;
    createdAt: string;
  }[];
}

async function masterCopy(storeId: string): Promise<LedgerCopy> {
  const q = <R extends object>(sql: string) =>
    t.ctx.master.sequelize.query<R>(sql, { replacements: { storeId }, type: QueryTypes.SELECT });
  const [bal] = await q<{ balance: string }>('SELECT balance FROM credit_balances WHERE store_id = :storeId');
  const rows = await q<{
    id: string;
    type: string;
    service: string | null;
    quantity: number | null;
    amount: string;
    balance_after: string;
    created_at: string;
  }>(
    `SELECT id, type, service, quantity, amount, balance_after, created_at::text FROM credit_transactions WHERE store_id = :storeId AND status = 'completed' ORDER BY seq`,
  );
  return {
    balance: Number(bal?.balance ?? 0),
    lastTransactionAt: rows.length ? new Date(rows[rows.length - 1].created_at).toISOString() : null,
    rows: rows.map((r) => ({
      id: r.id,
      type: r.type,
      service: r.service,
      quantity: r.quantity,
      amount: Number(r.amount),
      balanceAfter: Number(r.balance_after),
      createdAt: new Date(r.created_at).toISOString(),
    })),
  };
}

/** Read the tenant DB as the server's admin (the store's own role may be locked out in a test). */
async function tenantCopy(store: TestStore): Promise<LedgerCopy | null> {
  const [cache, log] = await withClient(urlFor(store.database), async (c) => [
    (await c.query('SELECT balance, last_transaction_at FROM credit_balance_cache')).rows,
    (
      await c.query(
        'SELECT transaction_id, type, service, quantity, amount, balance_after, created_at FROM credit_spending_log ORDER BY created_at, transaction_id',
      )
    ).rows,
  ]);
  if (!cache.length) return null;
  const rows = log as {
    transaction_id: string;
    type: string;
    service: string | null;
    quantity: number | null;
    amount: string;
    balance_after: string;
    created_at: Date;
  }[];
  return {
    balance: Number(cache[0].balance),
    lastTransactionAt: cache[0].last_transaction_at ? (cache[0].last_transaction_at as Date).toISOString() : null,
    rows: rows.map((r) => ({
      id: r.transaction_id,
      type: r.type,
      service: r.service,
      quantity: r.quantity,
      amount: Number(r.amount),
      balanceAfter: Number(r.balance_after),
      createdAt: r.created_at.toISOString(),
    })),
  };
}

const byId = (c: LedgerCopy) => ({ ...c, rows: [...c.rows].sort((a, b) => a.id.localeCompare(b.id)) });

/** Wait until the store's database holds exactly the master's balance and completed ledger rows. */
async function expectCacheCatchesUp(store: TestStore, timeoutMs = 15_000) {
  const expected = byId(await masterCopy(store.id));
  await eventually(async () => {
    const copy = await tenantCopy(store);
    expect(copy && byId(copy)).toEqual(expected);
  }, timeoutMs);
  return expected;
}

async function cutOff(store: TestStore) {
  await adminQuery(`REVOKE CONNECT ON DATABASE ${ident(store.database)} FROM ${ident(store.role)}`);
  await adminQuery(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${store.database}' AND usename = '${store.role}'`,
  );
}

async function reconnect(store: TestStore) {
  await adminQuery(`GRANT CONNECT ON DATABASE ${ident(store.database)} TO ${ident(store.role)}`);
}

test('after purchases, spends and adjustments the store database holds the master balance and every completed transaction', async () => {
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  await purchase(store.id, 300).expect(201);
  await spend(store.id, 'sms', 4).expect(201);
  await spend(store.id, 'ai_description', 2).expect(201);
  await post(`/api/admin/stores/${store.id}/credits/adjust`, { amount: -30, reason: 'Correction' }, admin.token).expect(
    201,
  );
  // A refused spend changes nothing anywhere.
  await spend(store.id, 'export', 100).expect(402);
  const copy = await expectCacheCatchesUp(store);
  expect(copy.balance).toBe(300 - 20 - 20 - 30);
  expect(copy.rows.map((r) => r.type).sort()).toEqual(['adjustment', 'purchase', 'spend', 'spend']);
});

test('a burst of concurrent spends shares a few syncs and ends in a cache that matches; a change after the syncs finished is synced too', async () => {
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  await purchase(store.id, 1000).expect(201);
  const burst = await Promise.all(Array.from({ length: 40 }, () => spend(store.id, 'email', 3)));
  expect(burst.every((r) => r.status === 201)).toBe(true);
  await expectCacheCatchesUp(store);
  // Nothing is left queued or running for this store; a later change must still start a new sync.
  await eventually(
    async () =>
      expect(await t.ctx.queues.get(QueueName.creditSync).getJobCounts('waiting', 'active', 'delayed')).toEqual({
        waiting: 0,
        active: 0,
        delayed: 0,
      }),
    10_000,
  );
  await spend(store.id, 'sms', 1).expect(201);
  const copy = await expectCacheCatchesUp(store);
  expect(copy.balance).toBe(1000 - 120 - 5);
  expect(copy.rows).toHaveLength(42);
  // The 42 changes shared a few syncs.
  const syncs = (await t.ctx.queues.get(QueueName.creditSync).getJobs(['completed'])).filter(
    (j) => j.data.storeId === store.id,
  );
  expect(syncs.length).toBeGreaterThan(0);
  expect(syncs.length).toBeLessThan(20);
});

test('a cache thousands of rows behind is copied in several batches, in ledger order, with none left out', async () => {
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  // History written straight into the master (as an import would), numbered 1..n like the ledger does.
  const n = Math.floor(SYNC_BATCH * 2.5);
  await t.ctx.master.sequelize.query(
    `INSERT INTO credit_transactions (store_id, type, status, amount, balance_after, seq, reason, created_at)
       SELECT :storeId, 'adjustment', 'completed', 1, g, g, 'import', now() - (:n - g) * interval '1 second' FROM generate_series(1, :n) g;
     INSERT INTO credit_balances (store_id, balance, seq) VALUES (:storeId, :n, :n)
       ON CONFLICT (store_id) DO UPDATE SET balance = EXCLUDED.balance, seq = EXCLUDED.seq`,
    { replacements: { storeId: store.id, n } },
  );
  await spend(store.id, 'email', 1).expect(201);
  const copy = await expectCacheCatchesUp(store);
  expect(copy.rows).toHaveLength(n + 1);
  expect(copy.balance).toBe(n - 1);
});

test('a copy that lost rows (its database restored from an older backup) is filled in again by the next sync', async () => {
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  await purchase(store.id, 100).expect(201);
  for (let i = 0; i < 5; i++) await spend(store.id, 'email', 1).expect(201);
  await expectCacheCatchesUp(store);
  // The "backup" was taken after the purchase and two spends.
  await adminQuery(
    `DELETE FROM credit_spending_log WHERE balance_after < 98; UPDATE credit_balance_cache SET balance = 98`,
    urlFor(store.database),
  );
  await spend(store.id, 'sms', 1).expect(201);
  const copy = await expectCacheCatchesUp(store);
  expect(copy.rows).toHaveLength(7);
  expect(copy.balance).toBe(90);
});

test('while the store database is unreachable the master takes every change and the API answers; the cache catches up once it is back', async () => {
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  await purchase(store.id, 500).expect(201);
  const before = await expectCacheCatchesUp(store);

  await cutOff(store);
  try {
    for (let i = 0; i < 5; i++) await spend(store.id, 'sms', 2).expect(201);
    await purchase(store.id, 40).expect(201);
    // The master is right and the balance is served from it.
    const res = await request(server)
      .get(`/api/stores/${store.id}/credits`)
      .set('Authorization', `Bearer ${owner.token}`)
      .expect(200);
    expect(res.body.balance).toBe(500 - 50 + 40);
    expect((await masterCopy(store.id)).rows).toHaveLength(7);
    // The sync keeps failing (and is retried) while the store's role cannot connect: the cache is behind.
    await new Promise((r) => setTimeout(r, 1500));
    const stale = await tenantCopy(store);
    expect(stale && byId(stale)).toEqual(byId(before));
  } finally {
    await reconnect(store);
  }
  const copy = await expectCacheCatchesUp(store, 30_000);
  expect(copy.balance).toBe(490);
  expect(copy.rows).toHaveLength(7);
});

test('a store without a database yet keeps its credits in the master only: the sync skips it', async () => {
  const storeId = (await insertStore(t, owner.user.id, { status: 'pending_database' })).id;
  await purchase(storeId, 20).expect(201);
  await spend(storeId, 'email', 1).expect(201);
  const queue = t.ctx.queues.get(QueueName.creditSync);
  await eventually(async () => {
    const done = (await queue.getJobs(['completed'])).filter((j) => j.data.storeId === storeId);
    expect(done.length).toBeGreaterThan(0);
    expect(done[0].returnvalue).toEqual({ skipped: 'STORE_NOT_READY' });
  }, 10_000);
});

test('a store that gets its database after buying credits finds them in its cache once provisioning is done', async () => {
  const storeId = (await insertStore(t, owner.user.id, { status: 'pending_database' })).id;
  await purchase(storeId, 80).expect(201);
  await spend(storeId, 'sms', 1).expect(201);
  await post(`/api/stores/${storeId}/database`, { mode: 'managed' }).expect(202);
  await eventually(
    async () => expect((await t.ctx.master.models.Store.findByPk(storeId))?.status).toBe('active'),
    30_000,
  );
  const db = await t.ctx.master.models.StoreDatabase.findByPk(storeId, { rejectOnEmpty: true });
  const expected = byId(await masterCopy(storeId));
  await eventually(async () => {
    const cache = (await adminQuery('SELECT balance FROM credit_balance_cache', urlFor(db.databaseName!))).rows;
    const log = (
      await adminQuery(
        'SELECT transaction_id FROM credit_spending_log ORDER BY transaction_id',
        urlFor(db.databaseName!),
      )
    ).rows;
    expect(cache.map((r) => Number(r.balance))).toEqual([75]);
    expect(log.map((r) => r.transaction_id)).toEqual(expected.rows.map((r) => r.id));
  }, 15_000);
});
