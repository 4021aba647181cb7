import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery } from '../helpers/tenants';

/**
 * Backups and restores through the queue worker (BullMQ, in this process), with the store's storefront read
 * all along: during the switch a request waits or answers 503 TENANT_MIGRATING with Retry-After, nothing else.
 */

const backupDir = mkdtempSync(path.join(tmpdir(), 'tenantry-backups-worker-'));
const t = useSuite('backups_worker', { WORKER: 'on', BACKUP_DIR: backupDir });

beforeAll(() => t.defer('the backup directory', () => rmSync(backupDir, { recursive: true, force: true })));

const HOST = 'restored.shop.test';

it('backs up and restores through the worker while the storefront is read: only 200s and 503 TENANT_MIGRATING', async () => {
  const owner = await registerUser(t.app);
  const store = await createActiveStore(t, { ownerId: owner.user.id, hostnames: [HOST] });
  await tenantQuery(
    store,
    `INSERT INTO products (sku, name, price_cents) SELECT 'sku-' || i, 'Product ' || i, i FROM generate_series(1, 40) i`,
  );

  const created = await request(t.app).post(`/api/stores/${store.id}/backups`).set(auth(owner.token)).expect(202);
  const backupId = created.body.backupId as string;
  const listed = await eventually(async () => {
    const res = await request(t.app).get(`/api/stores/${store.id}/backups`).set(auth(owner.token)).expect(200);
    const item = (res.body.items as { id: string; state: string; bytes: number | null }[]).find(
      (b) => b.id === backupId,
    );
    if (item?.state !== 'completed') throw new Error(`backup ${JSON.stringify(item)}`);
    return item;
  }, 20_000);
  expect(listed.bytes).toBeGreaterThan(0);

  // a product added after the backup, which the restore takes away
  await tenantQuery(store, `INSERT INTO products (sku, name, price_cents) VALUES ('late', 'Late product', 1)`);

  const statuses: { status: number; code?: string; retryAfter?: string }[] = [];
  let reading = true;
  const reader = (async () => {
    while (reading) {
      const res = await request(t.app).get('/api/store/products?limit=100').set('Host', HOST);
      statuses.push({ status: res.status, code: res.body?.code, retryAfter: res.headers['retry-after'] });
    }
  })();

  const restore = await request(t.app)
    .post(`/api/stores/${store.id}/backups/${backupId}/restore`)
    .set(auth(owner.token))
    .expect(202);
  expect(restore.body.jobId).toMatch(/^restore-/);
  const restoreId = (restore.body.jobId as string).replace(/^restore-/, '');
  await eventually(async () => {
    const [row] = await t.ctx.master.sequelize.query<{ state: string }>(
      'SELECT state FROM store_restores WHERE id = $1::uuid',
      { bind: [restoreId], type: QueryTypes.SELECT },
    );
    if (row.state !== 'completed') throw new Error(`restore ${row.state}`);
  }, 30_000);

  // the storefront now reads the restored database: the late product is gone
  const after = await eventually(async () => {
    const res = await request(t.app).get('/api/store/products?limit=100').set('Host', HOST).expect(200);
    const skus = (res.body.items as { sku: string }[]).map((p) => p.sku);
    if (skus.includes('late')) throw new Error('still the old database');
    return skus;
  }, 10_000);
  reading = false;
  await reader;
  expect(after).toHaveLength(40);
  expect(statuses.length).toBeGreaterThan(0);
  const unexpected = statuses.filter(
    (s) => s.status !== 200 && !(s.status === 503 && s.code === 'TENANT_MIGRATING' && s.retryAfter),
  );
  expect(unexpected).toEqual([]);
});
