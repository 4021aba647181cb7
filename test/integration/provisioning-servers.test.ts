import request from 'supertest';
import { registerUser } from '../helpers/app';
import { adminQuery, SECOND_SERVER_URL, TEST_SERVER_URL } from '../helpers/db';
import { auth, createStoreViaApi, queryWith, storeConnection, waitForProvisioning } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { serverKeyOfUrl } from '../../src/db/tenant-servers';

/** Managed stores spread over every Postgres server in TENANT_SERVERS, each in a database of its own. */
const t = useSuite('provservers', { WORKER: 'on', TENANT_SERVERS: `${TEST_SERVER_URL},${SECOND_SERVER_URL}` });

test("four managed stores spread two and two over two tenant servers, and each store's products live only in its own database", async () => {
  const owners = await Promise.all([0, 1, 2, 3].map(() => registerUser(t.app)));
  const stores: { id: string; token: string; host: string; sku: string }[] = [];
  // One after the other: each connect sees where the previous stores went.
  for (const [i, owner] of owners.entries()) {
    const store = await createStoreViaApi(t.app, owner.token, { name: `Spread ${i}` });
    await request(t.app)
      .post(`/api/stores/${store.id}/database`)
      .set(auth(owner.token))
      .send({ mode: 'managed' })
      .expect(202);
    stores.push({ id: store.id, token: owner.token, host: `${store.slug}.localhost`, sku: `SPREAD-${i}` });
  }
  await Promise.all(stores.map((s) => waitForProvisioning(t.app, s.token, s.id)));

  const rows = await t.ctx.master.models.StoreDatabase.findAll({ raw: true });
  expect(rows).toHaveLength(4);
  const perServer = new Map<string, number>();
  for (const r of rows) perServer.set(r.server!, (perServer.get(r.server!) ?? 0) + 1);
  expect(Object.fromEntries(perServer)).toEqual({
    [serverKeyOfUrl(TEST_SERVER_URL)]: 2,
    [serverKeyOfUrl(SECOND_SERVER_URL)]: 2,
  });

  // Each database exists on its server only.
  for (const r of rows) {
    const [home, elsewhere] =
      r.server === serverKeyOfUrl(TEST_SERVER_URL)
        ? [TEST_SERVER_URL, SECOND_SERVER_URL]
        : [SECOND_SERVER_URL, TEST_SERVER_URL];
    expect((await adminQuery(`SELECT 1 FROM pg_database WHERE datname = '${r.databaseName}'`, home)).rowCount).toBe(1);
    expect(
      (await adminQuery(`SELECT 1 FROM pg_database WHERE datname = '${r.databaseName}'`, elsewhere)).rowCount,
    ).toBe(0);
  }

  for (const s of stores) {
    await request(t.app)
      .post('/api/store/products')
      .set('Host', s.host)
      .set(auth(s.token))
      .send({ sku: s.sku, name: `Product ${s.sku}`, priceCents: 500, stock: 3 })
      .expect(201);
  }
  for (const s of stores) {
    const conn = await storeConnection(t, s.id);
    const row = rows.find((r) => r.storeId === s.id)!;
    expect(`${conn.host}:${conn.port}`).toBe(row.server);
    expect(await queryWith(conn, 'SELECT sku FROM products ORDER BY sku')).toEqual([{ sku: s.sku }]);
    expect(await queryWith(conn, 'SELECT id FROM stores')).toEqual([{ id: s.id }]);
    // The storefront of each host lists its own product only.
    const list = await request(t.app).get('/api/store/products').set('Host', s.host).expect(200);
    expect(list.body.items.map((p: { sku: string }) => p.sku)).toEqual([s.sku]);
  }
});
