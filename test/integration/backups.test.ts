import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { listTenantTables } from '../../src/backups/tenant-tables';
import { processBackup, processRestore, removeExpired, scheduleDueBackups } from '../../src/backups/backups.service';
import { withClient } from '../../src/db/pg-client';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { ident } from '../../src/db/tenant-server-admin';
import { secretContext } from '../../src/lib/crypto';
import { registerUser } from '../helpers/app';
import { expectProblem } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

/**
 * Per-store backups (issue 15, items 1-3): an encrypted logical archive per store, restored into a new
 * database that the store is switched to. The jobs' processors are called in-process, as the worker would.
 */

const backupDir = mkdtempSync(path.join(tmpdir(), 'tenantry-backups-test-'));
const t = useSuite('backups', { BACKUP_DIR: backupDir, PAYMENTS_PROVIDER: 'manual' });
let owner: Awaited<ReturnType<typeof registerUser>>;
let stranger: Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  t.defer('the backup directory', () => rmSync(backupDir, { recursive: true, force: true }));
  [owner, stranger] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
});

const serverUrl = (database: string) => {
  const u = new URL(t.db.url);
  u.pathname = `/${database}`;
  return u.toString();
};

/** A statement on the test server's admin database. */
const adminQuery = async <R extends object = Record<string, unknown>>(sql: string, params: unknown[] = []) =>
  (await withClient(serverUrl('postgres'), (c) => c.query<R & pg.QueryResultRow>(sql, params))).rows;

/** Where the master says the store's database is now. */
async function currentDatabase(storeId: string): Promise<string> {
  const db = await t.ctx.master.models.StoreDatabase.findByPk(storeId);
  return db!.databaseName!;
}

/** Every row of every table of a database (as the server's admin), in a stable order. */
async function dump(database: string): Promise<Record<string, unknown[]>> {
  return withClient(serverUrl(database), async (client) => {
    const out: Record<string, unknown[]> = {};
    for (const table of await listTenantTables(client)) {
      const order = table.columns.map((_, i) => i + 1).join(', ');
      out[table.name] = (await client.query(`SELECT * FROM public.${ident(table.name)} ORDER BY ${order}`)).rows;
    }
    return out;
  });
}

async function seed(store: TestStore, products: number): Promise<void> {
  await tenantQuery(
    store,
    `INSERT INTO users (email, password_hash, name, role) VALUES ('buyer@example.test', 'x', 'Buyer', 'customer')`,
  );
  await tenantQuery(
    store,
    `INSERT INTO products (sku, name, description, price_cents)
     SELECT 'sku-' || i, 'Product ' || i, E'line one\\nline "two"\\ttab ü', i * 10 FROM generate_series(1, $1::int) i`,
    [products],
  );
  await tenantQuery(store, `INSERT INTO inventory (product_id, stock) SELECT id, 5 FROM products`);
  await placeOrder(store);
}

async function placeOrder(store: TestStore): Promise<string> {
  const [order] = await tenantQuery<{ id: string }>(
    store,
    `INSERT INTO orders (customer_id, currency, subtotal_cents, total_cents)
     SELECT id, 'EUR', 10, 10 FROM users ORDER BY created_at LIMIT 1 RETURNING id`,
  );
  await tenantQuery(
    store,
    `INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_cents, line_total_cents)
     SELECT $1, id, sku, name, 1, price_cents, price_cents FROM products ORDER BY sku LIMIT 1`,
    [order.id],
  );
  return order.id;
}

async function backUp(store: TestStore, token = owner.token): Promise<string> {
  const res = await request(t.app).post(`/api/stores/${store.id}/backups`).set(auth(token));
  expect(res.status).toBe(202);
  const { backupId } = res.body as { backupId: string };
  await processBackup(t.ctx, backupId);
  return backupId;
}

async function askRestore(store: TestStore, backupId: string): Promise<string> {
  const res = await request(t.app).post(`/api/stores/${store.id}/backups/${backupId}/restore`).set(auth(owner.token));
  expect(res.status).toBe(202);
  return (res.body.jobId as string).replace(/^restore-/, '');
}

const ledger = (storeId: string) =>
  t.ctx.master.sequelize.query(
    `SELECT id, type, amount, balance_after FROM credit_transactions WHERE store_id = $1::uuid ORDER BY created_at, id`,
    { bind: [storeId], type: QueryTypes.SELECT },
  );

describe('backup and restore', () => {
  it('restores the data row for row: an order placed after the backup is gone, the master ledger untouched', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await seed(store, 300);
    const before = await dump(store.database);
    const indexes = (database: string) =>
      withClient(
        serverUrl(database),
        async (c) =>
          (await c.query(`SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname`)).rows,
      );
    const indexesBefore = await indexes(store.database);
    const backupId = await backUp(store);

    const list = await request(t.app).get(`/api/stores/${store.id}/backups`).set(auth(owner.token));
    expect(list.status).toBe(200);
    expect(list.body.items).toEqual([
      expect.objectContaining({ id: backupId, state: 'completed', schemaVersion: 1, bytes: expect.any(Number) }),
    ]);
    expect(list.body.items[0].bytes).toBeGreaterThan(100);
    // the archive is encrypted: no product name in clear (and compressed anyway)
    const file = path.join(backupDir, store.id, `${backupId}.tbk`);
    expect(readFileSync(file).includes(Buffer.from('Product 1'))).toBe(false);

    const lateOrder = await placeOrder(store);
    const purchase = await request(t.app)
      .post(`/api/stores/${store.id}/credits/purchase`)
      .set(auth(owner.token))
      .send({ amount: 100, idempotencyKey: randomUUID() });
    expect(purchase.status).toBeLessThan(300);
    const ledgerBefore = await ledger(store.id);
    expect(ledgerBefore.length).toBeGreaterThan(0);

    const restoreId = await askRestore(store, backupId);
    await processRestore(t.ctx, restoreId);

    const now = await currentDatabase(store.id);
    expect(now).not.toBe(store.database);
    expect(await dump(now)).toEqual(before);
    expect(await indexes(now)).toEqual(indexesBefore); // set aside during the copy, built again after it
    const orders = await withClient(serverUrl(now), (c) => c.query('SELECT id FROM orders WHERE id = $1', [lateOrder]));
    expect(orders.rowCount).toBe(0);
    expect(await ledger(store.id)).toEqual(ledgerBefore);

    // its role owns the new database as provisioning makes one, and reaches it with the stored credentials
    const [owned] = await adminQuery<{ owner: string; acl: string }>(
      `SELECT pg_get_userbyid(datdba) AS owner, datacl::text AS acl FROM pg_database WHERE datname = $1`,
      [now],
    );
    expect(owned.owner).toBe(store.role);
    expect(owned.acl).not.toMatch(/(^|[{,])=/); // no CONNECT for PUBLIC
    const connection = t.ctx.encryptor.decryptJson<TenantConnection>(
      (await t.ctx.master.models.StoreDatabase.findByPk(store.id))!.credentials,
      secretContext.storeCredentials(store.id),
    );
    const asStore = await withClient({ ...connection, connectionTimeoutMillis: 5000 }, (c) =>
      c.query<{ n: number }>('SELECT count(*)::int AS n FROM products'),
    );
    expect(asStore.rows[0].n).toBe(300);

    // the replaced database is kept (closed) until the retention ends, then dropped by the maintenance task
    const [restore] = await t.ctx.master.sequelize.query<{ replaced_database: string; drop_after: Date }>(
      `SELECT replaced_database, drop_after FROM store_restores WHERE id = $1::uuid`,
      { bind: [restoreId], type: QueryTypes.SELECT },
    );
    expect(restore.replaced_database).toBe(store.database);
    expect(new Date(restore.drop_after).getTime()).toBeGreaterThan(Date.now());
    await t.ctx.master.sequelize.query(
      `UPDATE store_restores SET drop_after = now() - interval '1 second' WHERE id = $1::uuid`,
      { bind: [restoreId] },
    );
    const removed = await removeExpired(t.ctx);
    expect(removed.databases).toBe(1);
    expect(await adminQuery(`SELECT 1 FROM pg_database WHERE datname = $1`, [store.database])).toHaveLength(0);
  });

  it('refuses a tampered archive (one byte flipped): the restore fails and the store keeps its database', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await seed(store, 50);
    const backupId = await backUp(store);
    const file = path.join(backupDir, store.id, `${backupId}.tbk`);
    const bytes = readFileSync(file);
    bytes[Math.floor(bytes.length / 2)] ^= 0x01;
    writeFileSync(file, bytes);
    const before = await dump(store.database);

    const restoreId = await askRestore(store, backupId);
    await expect(processRestore(t.ctx, restoreId)).rejects.toThrow(/does not authenticate/);

    expect(await currentDatabase(store.id)).toBe(store.database);
    expect(await dump(store.database)).toEqual(before);
    const [row] = await t.ctx.master.sequelize.query<{ state: string; new_database: string }>(
      `SELECT state, new_database FROM store_restores WHERE id = $1::uuid`,
      { bind: [restoreId], type: QueryTypes.SELECT },
    );
    expect(row.state).toBe('failed');
    expect(await adminQuery(`SELECT 1 FROM pg_database WHERE datname = $1`, [row.new_database])).toHaveLength(0);
  });

  it('restores a backup made under an old key after the key rotation (new key first, old one kept)', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await seed(store, 20);
    const before = await dump(store.database);
    const backupId = await backUp(store);
    const old = t.ctx.config.encryptionKeys.map((k) => `${k.id}:${k.key.toString('base64')}`).join(',');
    const rotated = await t.instance({
      BACKUP_DIR: backupDir,
      ENCRYPTION_KEYS: `rotated:${randomBytes(32).toString('base64')},${old}`,
    });
    const restoreId = await askRestore(store, backupId);
    await processRestore(rotated.ctx, restoreId);
    const now = await currentDatabase(store.id);
    expect(now).not.toBe(store.database);
    expect(await dump(now)).toEqual(before);
    // without the old key, nothing of the store (credentials, archive) can be read: the store keeps its database
    const newOnly = await t.instance({
      BACKUP_DIR: backupDir,
      ENCRYPTION_KEYS: `rotated:${randomBytes(32).toString('base64')}`,
    });
    const store2 = await createActiveStore(t, { ownerId: owner.user.id });
    const backup2 = await backUp(store2);
    const restore2 = await askRestore(store2, backup2);
    await expect(processRestore(newOnly.ctx, restore2)).rejects.toThrow();
    expect(await currentDatabase(store2.id)).toBe(store2.database);
  });
});

describe('access', () => {
  it('answers 403 to a non-member (another store owner) and 404 for an unknown store or backup', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const other = await createActiveStore(t, { ownerId: stranger.user.id });
    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/backups`).set(auth(stranger.token)),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await request(t.app).get(`/api/stores/${store.id}/backups`).set(auth(stranger.token)),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await request(t.app).post(`/api/stores/${randomUUID()}/backups`).set(auth(owner.token)),
      404,
      'STORE_NOT_FOUND',
    );
    // another store's backup, asked through this store: not found here
    const othersBackup = await backUp(other, stranger.token);
    expectProblem(
      await request(t.app).post(`/api/stores/${store.id}/backups/${othersBackup}/restore`).set(auth(owner.token)),
      404,
      'NOT_FOUND',
    );
    expectProblem(
      await request(t.app).post(`/api/stores/${other.id}/backups/${othersBackup}/restore`).set(auth(owner.token)),
      403,
      'FORBIDDEN',
    );
  });
});

describe('a restore while the store is being moved', () => {
  it("is refused 409 CONFLICT and records nothing (the move would otherwise switch from a database no longer the store's)", async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const backupId = await backUp(store);
    const [db] = await t.ctx.master.sequelize.query<{ server: string; database: string }>(
      `SELECT server, database_name AS database FROM store_databases WHERE store_id = $1::uuid`,
      { bind: [store.id], type: QueryTypes.SELECT },
    );
    // A move under way (its job not needed: the row is what a restore request reads).
    await t.ctx.master.sequelize.query(
      `INSERT INTO store_moves (store_id, state, source_server, source_database, target_server, requested_by)
       VALUES ($1::uuid, 'copying', $2, $3, 'elsewhere:5432', 'test')`,
      { bind: [store.id, db.server, db.database] },
    );
    try {
      expectProblem(
        await request(t.app).post(`/api/stores/${store.id}/backups/${backupId}/restore`).set(auth(owner.token)),
        409,
        'CONFLICT',
      );
      const restores = await t.ctx.master.sequelize.query(`SELECT 1 FROM store_restores WHERE store_id = $1::uuid`, {
        bind: [store.id],
        type: QueryTypes.SELECT,
      });
      expect(restores).toEqual([]);
    } finally {
      await t.ctx.master.sequelize.query(`DELETE FROM store_moves WHERE store_id = $1::uuid`, { bind: [store.id] });
    }
  });
});

describe('schedule and retention', () => {
  it('queues one scheduled backup per active store that is due, not twice', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const scheduled = () =>
      t.ctx.master.sequelize.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM store_backups WHERE store_id = $1::uuid AND trigger = 'schedule'`,
        { bind: [store.id], type: QueryTypes.SELECT },
      );
    const first = await scheduleDueBackups(t.ctx);
    expect(first.queued).toBeGreaterThan(0);
    expect((await scheduled())[0].n).toBe(1);
    await scheduleDueBackups(t.ctx);
    expect((await scheduled())[0].n).toBe(1);
  });

  it('removes expired archives and their rows; the retention follows the plan', async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const backupId = await backUp(store);
    const [row] = await t.ctx.master.sequelize.query<{ days: number }>(
      `SELECT round(extract(epoch FROM expires_at - created_at) / 86400)::int AS days FROM store_backups WHERE id = $1::uuid`,
      { bind: [backupId], type: QueryTypes.SELECT },
    );
    expect(row.days).toBe(7); // the free plan's backup_retention_days
    expect(readdirSync(path.join(backupDir, store.id))).toEqual([`${backupId}.tbk`]);
    await t.ctx.master.sequelize.query(
      `UPDATE store_backups SET expires_at = now() - interval '1 second' WHERE id = $1::uuid`,
      { bind: [backupId] },
    );
    const removed = await removeExpired(t.ctx);
    expect(removed.archives).toBeGreaterThanOrEqual(1);
    expect(readdirSync(path.join(backupDir, store.id))).toEqual([]);
    const list = await request(t.app).get(`/api/stores/${store.id}/backups`).set(auth(owner.token));
    expect(list.body.items).toEqual([]);
  });

  it("removes a purged store's archives (its rows went with it)", async () => {
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const backupId = await backUp(store);
    expect(readdirSync(path.join(backupDir, store.id))).toEqual([`${backupId}.tbk`]);
    await t.ctx.master.sequelize.query('DELETE FROM stores WHERE id = $1::uuid', { bind: [store.id] });
    await removeExpired(t.ctx);
    expect(readdirSync(path.join(backupDir, store.id))).toEqual([]);
  });
});
