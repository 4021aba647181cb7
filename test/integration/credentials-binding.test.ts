import { createCipheriv, randomBytes } from 'node:crypto';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

/**
 * Each credentials ciphertext is bound to its store_databases row: whoever can write the master DB (a
 * restored backup, a bad migration, an SQL injection) cannot point one store at another store's
 * database by copying a ciphertext across rows.
 */
const t = useSuite('binding');
let owner: Awaited<ReturnType<typeof registerUser>>;
let a: TestStore;
let b: TestStore;
const A = 'a.binding.test';
const B = 'b.binding.test';

beforeAll(async () => {
  owner = await registerUser(t.app);
  [a, b] = await Promise.all([
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [A] }),
    createActiveStore(t, { ownerId: owner.user.id, hostnames: [B] }),
  ]);
  // Written straight into the tenant databases, so that no request has opened a connection to A yet.
  await tenantQuery(a, `INSERT INTO products (sku, name, price_cents) VALUES ('only-in-a', 'A thing', 100)`);
  await tenantQuery(b, `INSERT INTO products (sku, name, price_cents) VALUES ('only-in-b', 'B thing', 100)`);
});

const products = (host: string) => request(t.app).get('/api/store/products').set('Host', host);
const credentialsOf = async (storeId: string) =>
  (await t.ctx.master.models.StoreDatabase.findByPk(storeId, { rejectOnEmpty: true })).credentials;
const setCredentials = async (storeId: string, credentials: string) => {
  await t.ctx.master.models.StoreDatabase.update({ credentials }, { where: { storeId } });
  await t.ctx.tenants.invalidate(storeId);
};
/** Sessions open on a tenant database (its name is ours: a test database, no quoting needed). */
const backendsOn = async (database: string) =>
  Number((await adminQuery(`SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '${database}'`)).rows[0].n);

test("store A's credentials copied into store B's row: B answers 503 TENANT_UNAVAILABLE and never reaches A's database; A is unaffected", async () => {
  const bCredentials = await credentialsOf(b.id);
  await setCredentials(b.id, await credentialsOf(a.id));

  for (let i = 0; i < 2; i++) {
    const res = await products(B);
    expectProblem(res, 503, 'TENANT_UNAVAILABLE');
    expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(res.text).not.toContain('only-in-a');
    for (const secret of [a.database, a.role, a.connection.password, 'decrypt', 'ciphertext'])
      expect(res.text).not.toContain(secret);
  }
  expect(await backendsOn(a.database)).toBe(0);
  expect(t.ctx.tenants.peek(b.id)).toBeNull();

  // Only B is refused: A still serves its own catalogue.
  const own = await products(A).expect(200);
  expect(JSON.stringify(own.body)).toContain('only-in-a');

  // Put back, B serves its own catalogue again.
  await setCredentials(b.id, bCredentials);
  const back = await eventually(async () => products(B).expect(200));
  expect(JSON.stringify(back.body)).toContain('only-in-b');
  expect(JSON.stringify(back.body)).not.toContain('only-in-a');
});

test('a store whose credentials were encrypted before row binding (v1) is still served', async () => {
  const [current] = t.ctx.config.encryptionKeys;
  // The v1 format: AES-256-GCM whose additional data is the key id only.
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', current.key, iv, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(current.id));
  const data = Buffer.concat([cipher.update(JSON.stringify(b.connection), 'utf8'), cipher.final()]);
  const v1 = ['v1', current.id, ...[iv, cipher.getAuthTag(), data].map((x) => x.toString('base64url'))].join('.');

  await setCredentials(b.id, v1);
  await eventually(async () => expect(t.ctx.tenants.peek(b.id)).toBeNull());
  const res = await products(B).expect(200);
  expect(JSON.stringify(res.body)).toContain('only-in-b');
});
