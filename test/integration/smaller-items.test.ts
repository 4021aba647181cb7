import request from 'supertest';
import Stripe from 'stripe';
import { registerUser, uniqueEmail } from '../helpers/app';
import { countRows } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { auth, createStoreViaApi, uniqueSlug } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';

/** Issue 9, section 5: slug before plan limit, Stripe key messages, restore screens, 415 for non-JSON bodies. */

const WEBHOOK_SECRET = 'whsec_smalleritems0123456789';
const A = 'a.smaller.test';
const B = 'b.smaller.test';

const t = useSuite('smaller', { PAYMENTS_PROVIDER: 'stripe', STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET });
let api: RecordingClient;

type User = Awaited<ReturnType<typeof registerUser>>;

beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

/** A user on the pro plan (5 stores). */
async function proUser(): Promise<User> {
  const user = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: user.user.id, planId: 'pro' });
  return user;
}

describe('creating a store whose slug is taken', () => {
  test('a free-plan owner with one store asking for a taken slug hears 409 SLUG_TAKEN (not the plan limit); a free slug hears 403 PLAN_LIMIT_REACHED', async () => {
    const [owner, other] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
    const mine = await createStoreViaApi(t.app, owner.token);
    const theirs = await createStoreViaApi(t.app, other.token);
    const create = (slug: string) => api.post('/api/stores').set(auth(owner.token)).send({ name: 'Second', slug });

    expectProblem(await create(theirs.slug), 409, 'SLUG_TAKEN');
    expectProblem(await create(mine.slug), 409, 'SLUG_TAKEN');
    const free = uniqueSlug('free');
    expectProblem(await create(free), 403, 'PLAN_LIMIT_REACHED');
    expect(await countRows(t, 'stores', 'owner_id = :u', { u: owner.user.id })).toBe(1);
    expect(await countRows(t, 'stores', 'slug = :slug', { slug: free })).toBe(0);
  });

  test("a deleted store's slug stays taken (409 SLUG_TAKEN), also for an owner at the plan limit", async () => {
    const [owner, other] = await Promise.all([registerUser(t.app), registerUser(t.app)]);
    const gone = await createStoreViaApi(t.app, other.token);
    await api.delete(`/api/stores/${gone.id}`).set(auth(other.token)).expect(202);
    await createStoreViaApi(t.app, owner.token);
    expectProblem(
      await api.post('/api/stores').set(auth(owner.token)).send({ name: 'Copy', slug: gone.slug }),
      409,
      'SLUG_TAKEN',
    );
    // Its own owner cannot take it again either: restoring the store would need it.
    expectProblem(
      await api.post('/api/stores').set(auth(other.token)).send({ name: 'Again', slug: gone.slug }),
      409,
      'SLUG_TAKEN',
    );
    expect(await countRows(t, 'stores', 'slug = :slug', { slug: gone.slug })).toBe(1);
  });

  test('one free-plan owner sending the same new slug several times at once: one 201, the others 409 SLUG_TAKEN', async () => {
    const owner = await registerUser(t.app);
    const slug = uniqueSlug('twice');
    const answers = await Promise.all(
      [0, 1, 2, 3].map(() => api.post('/api/stores').set(auth(owner.token)).send({ name: 'Twice', slug })),
    );
    expect(answers.map((r) => r.status).sort()).toEqual([201, 409, 409, 409]);
    for (const r of answers.filter((a) => a.status === 409)) expectProblem(r, 409, 'SLUG_TAKEN');
    expect(await countRows(t, 'stores', 'owner_id = :u', { u: owner.user.id })).toBe(1);
  });

  test('two owners racing for one slug: exactly one store gets it, the other hears 409 SLUG_TAKEN', async () => {
    const owners = await Promise.all([registerUser(t.app), registerUser(t.app), registerUser(t.app)]);
    const slug = uniqueSlug('race');
    const answers = await Promise.all(
      owners.map((o) => api.post('/api/stores').set(auth(o.token)).send({ name: 'Race', slug })),
    );
    expect(answers.map((r) => r.status).sort()).toEqual([201, 409, 409]);
    for (const r of answers.filter((a) => a.status === 409)) expectProblem(r, 409, 'SLUG_TAKEN');
    expect(await countRows(t, 'stores', 'slug = :slug', { slug })).toBe(1);
  });
});

describe('Stripe key messages', () => {
  const keys = {
    publishableKey: 'pk_test_51PublishableKey0123',
    secretKey: 'sk_test_51SuperSecretKeyAbCd9876',
    webhookSecret: 'whsec_WebhookSecret0123456',
  };

  test('a key of the wrong form is refused with a message stating the rule it breaks', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    const put = (body: object) =>
      api.put(`/api/stores/${store.id}/integrations/stripe`).set(auth(owner.token)).send(body);
    const messageFor = async (body: object, field: string) => {
      const res = await put(body);
      expectValidationErrors(res, [field]);
      return (res.body.errors as { message: string }[])[0].message;
    };

    expect(await messageFor({ ...keys, publishableKey: 'pk_test_short' }, 'publishableKey')).toBe(
      'must be pk_test_ or pk_live_ followed by 8–250 letters and digits',
    );
    expect(await messageFor({ ...keys, publishableKey: keys.secretKey }, 'publishableKey')).toBe(
      'must be pk_test_ or pk_live_ followed by 8–250 letters and digits',
    );
    expect(await messageFor({ ...keys, secretKey: 'sk_test_with-dash-0123' }, 'secretKey')).toBe(
      'must be sk_test_ or sk_live_ (or a restricted key, rk_test_ or rk_live_) followed by 8–250 letters and digits',
    );
    expect(await messageFor({ ...keys, webhookSecret: 'whsec_' + 'x'.repeat(251) }, 'webhookSecret')).toBe(
      'must be whsec_ followed by 8–250 letters and digits',
    );
    expect(await countRows(t, 'store_integrations', 'store_id = :id', { id: store.id })).toBe(0);

    // What the messages promise is accepted: the shortest and the longest.
    await put({
      publishableKey: 'pk_live_' + 'a'.repeat(8),
      secretKey: 'rk_test_' + 'Z9'.repeat(125),
      webhookSecret: 'whsec_' + '0'.repeat(8),
    }).expect(200);
  });
});

describe('listing deleted stores (the restore screen)', () => {
  test("?status=deleted lists the owner's stores still within the restore window, with deletedAt and restorableUntil; the default listing is unchanged", async () => {
    const owner = await proUser();
    const live = await createStoreViaApi(t.app, owner.token, { name: 'Live' });
    const recent = await createStoreViaApi(t.app, owner.token, { name: 'Recent' });
    const older = await createStoreViaApi(t.app, owner.token, { name: 'Older' });
    const expired = await createStoreViaApi(t.app, owner.token, { name: 'Expired' });
    for (const s of [older, recent, expired])
      await api.delete(`/api/stores/${s.id}`).set(auth(owner.token)).expect(202);
    await t.ctx.master.sequelize.query(`UPDATE stores SET deleted_at = now() - interval '2 days' WHERE id = :id`, {
      replacements: { id: older.id },
    });
    await t.ctx.master.sequelize.query(`UPDATE stores SET deleted_at = now() - interval '31 days' WHERE id = :id`, {
      replacements: { id: expired.id },
    });
    // A deleted store of someone else where this owner was an admin: not theirs to restore.
    const other = await registerUser(t.app);
    const foreign = await createStoreViaApi(t.app, other.token);
    await t.ctx.master.models.StoreMember.create({ storeId: foreign.id, userId: owner.user.id, role: 'admin' });
    await api.delete(`/api/stores/${foreign.id}`).set(auth(other.token)).expect(202);

    const deleted = await api.get('/api/stores?status=deleted').set(auth(owner.token)).expect(200);
    expect(deleted.body).toEqual({
      items: [
        {
          id: recent.id,
          name: 'Recent',
          slug: recent.slug,
          status: 'deleted',
          role: 'owner',
          deletedAt: expect.any(String),
          restorableUntil: expect.any(String),
        },
        {
          id: older.id,
          name: 'Older',
          slug: older.slug,
          status: 'deleted',
          role: 'owner',
          deletedAt: expect.any(String),
          restorableUntil: expect.any(String),
        },
      ],
    });
    for (const item of deleted.body.items as { id: string; deletedAt: string; restorableUntil: string }[]) {
      const row = await t.ctx.master.models.Store.findByPk(item.id, { rejectOnEmpty: true });
      expect(item.deletedAt).toBe(row.deletedAt!.toISOString());
      expect(new Date(item.restorableUntil).getTime()).toBe(row.deletedAt!.getTime() + 30 * 86400_000);
    }

    // The store dropdown still shows the stores in use, as before.
    expect((await api.get('/api/stores').set(auth(owner.token)).expect(200)).body).toEqual({
      items: [{ id: live.id, name: 'Live', slug: live.slug, status: 'pending_database', role: 'owner' }],
    });

    // Restored, a store leaves the restore screen and is back in the dropdown.
    await api.post(`/api/stores/${recent.id}/restore`).set(auth(owner.token)).expect(200);
    expect(
      (await api.get('/api/stores?status=deleted').set(auth(owner.token)).expect(200)).body.items.map(
        (s: { id: string }) => s.id,
      ),
    ).toEqual([older.id]);
    expect(
      (await api.get('/api/stores').set(auth(owner.token)).expect(200)).body.items.map((s: { id: string }) => s.id),
    ).toEqual([live.id, recent.id]);
  });

  test('an unknown status value or an unknown query parameter answers 400 naming it', async () => {
    const owner = await registerUser(t.app);
    for (const qs of ['status=active', 'status=', 'status=DELETED', 'status=deleted&status=deleted']) {
      expectValidationErrors(await api.get(`/api/stores?${qs}`).set(auth(owner.token)), ['status']);
    }
    const res = await api.get('/api/stores?include=deleted').set(auth(owner.token));
    expectProblem(res, 400, 'VALIDATION_FAILED');
    expect(JSON.stringify(res.body.errors)).toContain('include');
    expectProblem(await api.get('/api/stores?status=deleted'), 401, 'UNAUTHENTICATED');
  });
});

describe('restoring a removed product', () => {
  let owner: User;
  let a: TestStore;
  let b: TestStore;
  let staffToken: string;
  let customerToken: string;

  /** Requests to one store by its hostname, optionally with a bearer token. */
  const at = (host: string, token?: string) => ({
    get: (path: string) => (token ? api.get(path).set(auth(token)) : api.get(path)).set('Host', host),
    post: (path: string) => (token ? api.post(path).set(auth(token)) : api.post(path)).set('Host', host),
    delete: (path: string) => (token ? api.delete(path).set(auth(token)) : api.delete(path)).set('Host', host),
  });
  const restore = (id: string, token?: string, host = A) => at(host, token).post(`/api/store/products/${id}/restore`);

  async function removedProduct(sku: string, host = A) {
    const created = await at(host, owner.token)
      .post('/api/store/products')
      .send({ sku, name: `Product ${sku}`, priceCents: 1500, stock: 7 })
      .expect(201);
    await at(host, owner.token).delete(`/api/store/products/${created.body.id}`).expect(204);
    return created.body as { id: string; sku: string; createdAt: string };
  }

  beforeAll(async () => {
    owner = await registerUser(t.app);
    [a, b] = await Promise.all([
      createActiveStore(t, { ownerId: owner.user.id, hostnames: [A] }),
      createActiveStore(t, { ownerId: owner.user.id, hostnames: [B] }),
    ]);
    const password = 'correct-horse-1';
    const staffEmail = uniqueEmail('staff');
    await at(A, owner.token)
      .post('/api/store/staff')
      .send({ email: staffEmail, name: 'Staff', password, role: 'staff' })
      .expect(201);
    staffToken = (await at(A).post('/api/store/auth/login').send({ email: staffEmail, password }).expect(200)).body
      .token;
    customerToken = (
      await at(A)
        .post('/api/store/auth/register')
        .send({ email: uniqueEmail('shopper'), password, name: 'Shopper' })
        .expect(201)
    ).body.token;
  });

  test("the owner's platform token brings a removed product back, inactive, with its stock; the restore is audited", async () => {
    const product = await removedProduct('RESTORE-1');
    expectProblem(await at(A).get(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');

    const res = await restore(product.id, owner.token).expect(200);
    expect(res.body).toEqual({
      id: product.id,
      sku: 'RESTORE-1',
      name: 'Product RESTORE-1',
      description: '',
      priceCents: 1500,
      currency: 'EUR',
      stock: 7,
      active: false,
      createdAt: product.createdAt,
      updatedAt: expect.any(String),
    });
    const [row] = await tenantQuery<{ deleted_at: Date | null; active: boolean }>(
      a,
      'SELECT deleted_at, active FROM products WHERE id = $1',
      [product.id],
    );
    expect(row).toEqual({ deleted_at: null, active: false });
    const audit = await tenantQuery<{ actor_id: string; actor_type: string }>(
      a,
      `SELECT actor_id, actor_type FROM audit_log WHERE action = 'product.restored' AND target_id = $1`,
      [product.id],
    );
    expect(audit).toEqual([{ actor_id: owner.user.id, actor_type: 'platform_user' }]);
    // Staff see it again (inactive); shoppers do not until it is put back on sale.
    await at(A, owner.token).get(`/api/store/products/${product.id}`).expect(200);
    expectProblem(await at(A).get(`/api/store/products/${product.id}`), 404, 'NOT_FOUND');
  });

  test('a staff store token may restore a product', async () => {
    const product = await removedProduct('RESTORE-STAFF');
    const res = await restore(product.id, staffToken).expect(200);
    expect(res.body).toMatchObject({ id: product.id, sku: 'RESTORE-STAFF', active: false });
  });

  test('a customer token answers 403 and no token 401; the product stays removed', async () => {
    const product = await removedProduct('RESTORE-CUSTOMER');
    expectProblem(await restore(product.id, customerToken), 403, 'FORBIDDEN');
    expectProblem(await restore(product.id), 401, 'UNAUTHENTICATED');
    const [row] = await tenantQuery<{ deleted: boolean }>(
      a,
      'SELECT deleted_at IS NOT NULL AS deleted FROM products WHERE id = $1',
      [product.id],
    );
    expect(row.deleted).toBe(true);
  });

  test("another store's product id, or an unknown id, answers 404 NOT_FOUND and changes nothing there", async () => {
    const onB = await removedProduct('RESTORE-B', B);
    expectProblem(await restore(onB.id, owner.token, A), 404, 'NOT_FOUND');
    expectProblem(await restore('00000000-0000-4000-8000-000000000000', owner.token), 404, 'NOT_FOUND');
    expectValidationErrors(await restore('not-a-uuid', owner.token), ['id']);
    const [row] = await tenantQuery<{ deleted: boolean }>(
      b,
      'SELECT deleted_at IS NOT NULL AS deleted FROM products WHERE id = $1',
      [onB.id],
    );
    expect(row.deleted).toBe(true);
  });

  test('restoring a product that is not removed answers 409 CONFLICT', async () => {
    const live = await at(A, owner.token)
      .post('/api/store/products')
      .send({ sku: 'RESTORE-LIVE', name: 'Live', priceCents: 100 })
      .expect(201);
    expectProblem(await restore(live.body.id, owner.token), 409, 'CONFLICT');
  });

  test('restoring a product whose SKU a live product now has answers 409 SKU_TAKEN and it stays removed', async () => {
    const old = await removedProduct('RESTORE-SKU');
    await at(A, owner.token)
      .post('/api/store/products')
      .send({ sku: 'RESTORE-SKU', name: 'Successor', priceCents: 100 })
      .expect(201);
    expectProblem(await restore(old.id, owner.token), 409, 'SKU_TAKEN');
    const rows = await tenantQuery<{ id: string }>(
      a,
      `SELECT id FROM products WHERE sku = 'RESTORE-SKU' AND deleted_at IS NOT NULL`,
    );
    expect(rows).toEqual([{ id: old.id }]);
    expect(
      await tenantQuery(a, `SELECT 1 FROM audit_log WHERE action = 'product.restored' AND target_id = $1`, [old.id]),
    ).toEqual([]);
  });
});

test('the OpenAPI document shows ?status on GET /api/stores and the product restore route', async () => {
  const doc = (await api.get('/openapi.json').expect(200)).body;
  const list = doc.paths['/api/stores'].get;
  expect(list.parameters).toEqual([
    expect.objectContaining({
      in: 'query',
      name: 'status',
      required: false,
      schema: expect.objectContaining({ enum: ['deleted'] }),
    }),
  ]);
  expect(JSON.stringify(list.responses['200'])).toContain('StoreListItem');
  expect(JSON.stringify(doc.components.schemas.StoreListItem)).toContain('restorableUntil');
  const restore = doc.paths['/api/store/products/{id}/restore'].post;
  expect(Object.keys(restore.responses)).toEqual(expect.arrayContaining(['200', '401', '403', '404', '409']));
});

describe('request bodies that are not JSON', () => {
  const HINT = 'send the body as JSON with Content-Type: application/json';

  test('a text/plain or form-encoded body answers 415 UNSUPPORTED_MEDIA_TYPE with a hint, and nothing is created', async () => {
    const owner = await registerUser(t.app);
    const slug = uniqueSlug('plain');
    const asText = await api
      .post('/api/stores')
      .set(auth(owner.token))
      .set('Content-Type', 'text/plain')
      .send(JSON.stringify({ name: 'Plain', slug }));
    expectProblem(asText, 415, 'UNSUPPORTED_MEDIA_TYPE');
    expect(asText.body.title).toBe('Unsupported Media Type');
    expect(asText.body.detail).toContain(HINT);
    expect(asText.text).not.toContain('received undefined');

    const asForm = await api.post('/api/stores').set(auth(owner.token)).type('form').send({ name: 'Form', slug });
    expectProblem(asForm, 415, 'UNSUPPORTED_MEDIA_TYPE');
    expect(asForm.body.detail).toContain(HINT);

    const withoutType = await api
      .post('/api/auth/login')
      .unset('Content-Type')
      .send(Buffer.from(JSON.stringify({ email: 'a@example.test', password: 'x' })));
    expectProblem(withoutType, 415, 'UNSUPPORTED_MEDIA_TYPE');
    expect(await countRows(t, 'stores', 'slug = :slug', { slug })).toBe(0);
  });

  test('a chunked body without a JSON content type answers 415 too', async () => {
    const owner = await registerUser(t.app);
    const req = api
      .patch(`/api/auth/profile`)
      .set(auth(owner.token))
      .set('Content-Type', 'text/plain')
      .set('Transfer-Encoding', 'chunked');
    req.write('{"name":"Chunked"}');
    expectProblem(await req, 415, 'UNSUPPORTED_MEDIA_TYPE');
  });

  test('JSON with a charset parameter is read as JSON', async () => {
    const owner = await registerUser(t.app);
    const slug = uniqueSlug('charset');
    const res = await api
      .post('/api/stores')
      .set(auth(owner.token))
      .set('Content-Type', 'application/json; charset=utf-8')
      .send(JSON.stringify({ name: 'Charset', slug }))
      .expect(201);
    expect(res.body).toMatchObject({ slug, name: 'Charset' });
  });

  test('a POST without a body needs no content type (logout, restore)', async () => {
    const owner = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, owner.token);
    await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);
    await api.post(`/api/stores/${store.id}/restore`).set(auth(owner.token)).expect(200);
    // An empty body under a foreign content type is no body either.
    await api.post('/api/auth/logout').set(auth(owner.token)).set('Content-Type', 'text/plain').expect(204);
    expectProblem(await api.get('/api/auth/me').set(auth(owner.token)), 401, 'UNAUTHENTICATED');
  });

  test('the Stripe webhook still reads its signed raw body whatever its content type', async () => {
    const payload = JSON.stringify({
      id: 'evt_smaller_1',
      object: 'event',
      type: 'customer.created',
      data: { object: {} },
    });
    const signature = Stripe.webhooks.generateTestHeaderString({ payload, secret: WEBHOOK_SECRET });
    const res = await request(t.app)
      .post('/api/webhooks/stripe')
      .set('Stripe-Signature', signature)
      .set('Content-Type', 'text/plain')
      .send(payload)
      .expect(200);
    expect(res.body).toMatchObject({ received: true, ignored: true });
  });
});
