import request from 'supertest';
import { QueryTypes } from 'sequelize';
import { listTenantTables } from '../../src/backups/tenant-tables';
import { withClient } from '../../src/db/pg-client';
import { secretContext } from '../../src/lib/crypto';
import { removeCapture, startCapture, withPrimaryKeys } from '../../src/moves/change-capture';
import { urlFor } from '../helpers/db';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { createPrefixedStore, tenantry, uniquePrefix, type PrefixedStore } from '../helpers/hygiene';
import { auth, queryWith } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * Drift (GET /api/admin/tenants/drift, `tenantry tenants:drift`): each store database's migrations table and
 * catalogue against what the code ships, differences in words; an unchanged store reports nothing.
 */
const t = useSuite('tenant-drift', { TENANT_DB_PREFIX: uniquePrefix('drift') });
let adminToken: string;
let clean: PrefixedStore;
let extraIndex: PrefixedStore;
let droppedColumn: PrefixedStore;
let editedChecksum: PrefixedStore;

beforeAll(async () => {
  adminToken = (await registerAdmin(t)).token;
  const ownerId = (await registerUser(t.app)).user.id;
  [clean, extraIndex, droppedColumn, editedChecksum] = await Promise.all(
    [1, 2, 3, 4].map(() => createPrefixedStore(t, ownerId)),
  );
  await queryWith(extraIndex.connection, 'CREATE INDEX products_extra_idx ON products (name)');
  await queryWith(droppedColumn.connection, 'ALTER TABLE customers DROP COLUMN phone');
  await queryWith(editedChecksum.connection, `UPDATE migrations SET hash = md5('edited') WHERE id = 1`);
});

type Item = { storeId: string; kind: string; detail: string };
const of = (items: Item[], store: PrefixedStore) =>
  items.filter((i) => i.storeId === store.id).map(({ kind, detail }) => ({ kind, detail }));

describe('GET /api/admin/tenants/drift', () => {
  let checkId: string;

  test('reports a hand-added index, a dropped column and an edited migration checksum in words; an unchanged store reports nothing', async () => {
    const res = await request(t.app).get('/api/admin/tenants/drift').set(auth(adminToken));
    expect(res.status).toBe(200);
    checkId = res.body.checkId;
    expect(res.body).toMatchObject({ checked: 4, differing: 3 });
    const items = res.body.items as Item[];
    expect(of(items, clean)).toEqual([]);
    expect(of(items, extraIndex)).toEqual([
      { kind: 'catalog_differs', detail: 'index products_extra_idx not in the schema' },
    ]);
    expect(of(items, droppedColumn)).toEqual(
      expect.arrayContaining([
        { kind: 'catalog_differs', detail: 'column customers.phone missing' },
        { kind: 'catalog_differs', detail: 'constraint customers.customers_phone_check missing' },
      ]),
    );
    expect(of(items, editedChecksum)).toEqual([
      {
        kind: 'changed_migration',
        detail: 'migration 0001_init.sql: the checksum recorded in the database differs from the shipped file',
      },
    ]);
  });

  test('a check is resumable: ?resume= compares only the stores not done yet and keeps the others', async () => {
    // As if the check had been cut off before these two stores.
    await t.ctx.master.sequelize.query(
      `UPDATE drift_check_stores SET state = 'pending', findings = NULL WHERE check_id = $1 AND store_id = ANY($2::uuid[])`,
      { bind: [checkId, [clean.id, extraIndex.id]] },
    );
    const res = await request(t.app).get(`/api/admin/tenants/drift?resume=${checkId}`).set(auth(adminToken));
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ checkId, checked: 4, differing: 3 });
    expect(of(res.body.items, extraIndex)).toEqual([
      { kind: 'catalog_differs', detail: 'index products_extra_idx not in the schema' },
    ]);
    const [{ n }] = await t.ctx.master.sequelize.query<{ n: number }>(`SELECT count(*)::int AS n FROM drift_checks`, {
      type: QueryTypes.SELECT,
    });
    expect(n).toBe(1);
    const unknown = await request(t.app)
      .get('/api/admin/tenants/drift?resume=00000000-0000-4000-8000-000000000000')
      .set(auth(adminToken));
    expect(unknown.status).toBe(404);
  });

  test('a store whose database cannot be reached is reported as unreachable', async () => {
    const ownerId = (await registerUser(t.app)).user.id;
    const gone = await createPrefixedStore(t, ownerId);
    const credentials = t.ctx.encryptor.encryptJson(
      { ...gone.connection, port: 1 },
      secretContext.storeCredentials(gone.id),
    );
    await t.ctx.master.models.StoreDatabase.update({ credentials }, { where: { storeId: gone.id } });
    const res = await request(t.app).get('/api/admin/tenants/drift?perServer=2').set(auth(adminToken));
    expect(res.status).toBe(200);
    expect(of(res.body.items, gone)).toEqual([
      { kind: 'unreachable', detail: expect.stringMatching(/^the database could not be read: /) },
    ]);
    // Back to its real server for the command line's test.
    await t.ctx.master.models.StoreDatabase.update(
      { credentials: t.ctx.encryptor.encryptJson(gone.connection, secretContext.storeCredentials(gone.id)) },
      { where: { storeId: gone.id } },
    );
  });

  test('a store token or a plain user gets 403', async () => {
    const user = await registerUser(t.app);
    const res = await request(t.app).get('/api/admin/tenants/drift').set(auth(user.token));
    expect(res.status).toBe(403);
  });
});

describe('tenantry tenants:drift', () => {
  test('prints each difference and exits 2 when a store differs', async () => {
    const res = await tenantry(t, ['tenants:drift', '--per-server', '2']);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(2);
    expect(res.stdout).toContain(`  ${extraIndex.id}  catalog_differs  index products_extra_idx not in the schema\n`);
    expect(res.stdout).toContain(`  ${droppedColumn.id}  catalog_differs  column customers.phone missing\n`);
    expect(res.stdout).not.toContain(clean.id);
    expect(res.stdout).toMatch(/Drift check [0-9a-f-]{36}: 5 stores compared, 3 differ \(\d+ ms\)\.\n$/);
  });

  test('exits 0 once the fleet is as the code expects', async () => {
    await queryWith(extraIndex.connection, 'DROP INDEX products_extra_idx');
    await queryWith(
      droppedColumn.connection,
      'ALTER TABLE customers ADD COLUMN phone text CHECK (length(phone) <= 40)',
    );
    const shipped = await queryWith<{ hash: string }>(clean.connection, 'SELECT hash FROM migrations WHERE id = 1');
    await queryWith(editedChecksum.connection, `UPDATE migrations SET hash = '${shipped[0].hash}' WHERE id = 1`);
    const res = await tenantry(t, ['tenants:drift', '--json']);
    expect(res).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(res.stdout)).toMatchObject({ checked: 5, differing: 0, items: [] });
  });
});

describe('a store being moved', () => {
  test("is not reported for the move's change-capture triggers; the same triggers on a store not moving are", async () => {
    const ownerId = (await registerUser(t.app)).user.id;
    const store = await createPrefixedStore(t, ownerId);
    const [placed] = await t.ctx.master.sequelize.query<{ server: string }>(
      `SELECT server FROM store_databases WHERE store_id = $1::uuid`,
      { bind: [store.id], type: QueryTypes.SELECT },
    );
    await withClient(urlFor(store.database), async (c) =>
      startCapture(c, await withPrimaryKeys(c, await listTenantTables(c)), 1000),
    );
    await t.ctx.master.sequelize.query(
      `INSERT INTO store_moves (store_id, state, source_server, source_database, target_server, requested_by)
       VALUES ($1::uuid, 'copying', $2, $3, 'elsewhere:5432', 'test')`,
      { bind: [store.id, placed.server, store.database] },
    );
    const drift = async () => {
      const res = await tenantry(t, ['tenants:drift', '--json']);
      return of((JSON.parse(res.stdout) as { items: Item[] }).items, store);
    };
    try {
      expect(await drift()).toEqual([]);
      await t.ctx.master.sequelize.query(`UPDATE store_moves SET state = 'failed' WHERE store_id = $1::uuid`, {
        bind: [store.id],
      });
      expect(await drift()).toEqual(
        expect.arrayContaining([
          { kind: 'catalog_differs', detail: expect.stringContaining('products.tenantry_move_capture') },
        ]),
      );
    } finally {
      await withClient(urlFor(store.database), removeCapture);
      await t.ctx.master.sequelize.query(`DELETE FROM store_moves WHERE store_id = $1::uuid`, { bind: [store.id] });
    }
  });
});
