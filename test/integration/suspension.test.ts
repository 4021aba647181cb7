import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, provisionManagedStore } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * Suspension belongs to the platform: while a store is suspended its owner may read it but not delete,
 * restore, rename it, change its hostnames, integrations or database — nothing that could lift the
 * suspension or act around it — and only a platform admin's resume ends it.
 */
const t = useSuite('suspension', { WORKER: 'on' });
let api: RecordingClient;
let admin: Awaited<ReturnType<typeof registerAdmin>>;
let owner: Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  api = recordingClient(t.app);
  admin = await registerAdmin(t);
  owner = await registerUser(t.app);
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const suspend = (storeId: string) =>
  api.post(`/api/admin/stores/${storeId}/suspend`).set(auth(admin.token)).expect(200);
const resume = (storeId: string) => api.post(`/api/admin/stores/${storeId}/resume`).set(auth(admin.token)).expect(200);
const storeApi = (storeId: string) => request(t.app).get('/api/store/info').set('X-Store-Id', storeId);

/** Everything an owner's action could have changed about a store in the master DB. */
async function snapshot(storeId: string) {
  const q = <R extends object>(sql: string) =>
    t.ctx.master.sequelize.query<R>(sql, { replacements: { storeId }, type: QueryTypes.SELECT });
  return {
    store: await q('SELECT name, status, deleted_at, suspended_at, updated_at FROM stores WHERE id = :storeId'),
    database: await q(
      'SELECT mode, status, credentials, last_error, updated_at FROM store_databases WHERE store_id = :storeId',
    ),
    hostnames: await q('SELECT * FROM store_hostnames WHERE store_id = :storeId ORDER BY hostname'),
    integrations: await q('SELECT * FROM store_integrations WHERE store_id = :storeId'),
    audit: await q('SELECT action FROM audit_log WHERE store_id = :storeId ORDER BY id'),
  };
}

describe('a suspended store', () => {
  test('every owner action that could change it answers 423 STORE_SUSPENDED and changes nothing; reads still work', async () => {
    const store = await provisionManagedStore(t.app, owner.token, { name: 'Held' });
    await suspend(store.id);
    const before = await snapshot(store.id);
    expect(before.store[0]).toMatchObject({ status: 'suspended', deleted_at: null });

    const id = store.id;
    const refused: [string, () => request.Test][] = [
      [
        'PATCH (rename)',
        () => api.patch(`/api/stores/${id}`).set(auth(owner.token)).send({ name: 'Renamed while held' }),
      ],
      ['DELETE', () => api.delete(`/api/stores/${id}`).set(auth(owner.token))],
      ['POST restore', () => api.post(`/api/stores/${id}/restore`).set(auth(owner.token))],
      [
        'PUT integrations/stripe',
        () =>
          api
            .put(`/api/stores/${id}/integrations/stripe`)
            .set(auth(owner.token))
            .send({ publishableKey: 'pk_test_abcdefgh1234', secretKey: 'sk_test_abcdefgh1234' }),
      ],
      ['POST database', () => api.post(`/api/stores/${id}/database`).set(auth(owner.token)).send({ mode: 'managed' })],
      ['POST provisioning/retry', () => api.post(`/api/stores/${id}/provisioning/retry`).set(auth(owner.token))],
      [
        'POST hostnames',
        () =>
          api.post(`/api/stores/${id}/hostnames`).set(auth(owner.token)).send({ hostname: 'held-shop.example.com' }),
      ],
    ];
    for (const [what, call] of refused) {
      const res = await call();
      if (res.status !== 423) throw new Error(`${what} on a suspended store answered ${res.status} ${res.text}`);
      expectProblem(res, 423, 'STORE_SUSPENDED');
    }
    expect(await snapshot(store.id)).toEqual(before);

    await api.get(`/api/stores/${id}`).set(auth(owner.token)).expect(200);
    await api.get(`/api/stores/${id}/hostnames`).set(auth(owner.token)).expect(200);
    await api.get(`/api/stores/${id}/provisioning`).set(auth(owner.token)).expect(200);
    await api.get(`/api/stores/${id}/credits`).set(auth(owner.token)).expect(200);
    expect((await api.get('/api/stores').set(auth(owner.token)).expect(200)).body.items).toEqual(
      expect.arrayContaining([expect.objectContaining({ id, status: 'suspended' })]),
    );
    expectProblem(await storeApi(id), 423, 'STORE_SUSPENDED');
  });

  test('deleting and restoring no longer lifts a suspension: a store deleted under a suspension restores as suspended', async () => {
    const store = await provisionManagedStore(t.app, owner.token, { name: 'Deleted then suspended' });
    // The old trick, now refused.
    await suspend(store.id);
    expectProblem(await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)), 423, 'STORE_SUSPENDED');
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('suspended');
    await resume(store.id);

    // Deleted first (or at the same moment), suspended while deleted: the suspension outlives the deletion.
    await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);
    expect((await suspend(store.id)).body).toEqual({ id: store.id, status: 'deleted' });
    const restored = await api.post(`/api/stores/${store.id}/restore`).set(auth(owner.token)).expect(200);
    expect(restored.body.status).toBe('suspended');
    const row = await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true });
    expect(row.status).toBe('suspended');
    expect(row.suspendedAt).toBeInstanceOf(Date);
    expect(row.deletedAt).toBeNull();
    expectProblem(await storeApi(store.id), 423, 'STORE_SUSPENDED');
    expectProblem(
      await api.patch(`/api/stores/${store.id}`).set(auth(owner.token)).send({ name: 'Free again?' }),
      423,
      'STORE_SUSPENDED',
    );
  });

  test('a store the old trick left deleted with its suspension recorded restores as suspended, not active', async () => {
    const store = await provisionManagedStore(t.app, owner.token, { name: 'Legacy' });
    // What a suspended store deleted by its owner before this fix looks like.
    await t.ctx.master.models.Store.update(
      { status: 'deleted', deletedAt: new Date(), suspendedAt: new Date() },
      { where: { id: store.id } },
    );
    const restored = await api.post(`/api/stores/${store.id}/restore`).set(auth(owner.token)).expect(200);
    expect(restored.body.status).toBe('suspended');
    expectProblem(await storeApi(store.id), 423, 'STORE_SUSPENDED');
  });

  test("only a platform admin's resume lifts it, back to the status of its database; then the owner may act again", async () => {
    const store = await provisionManagedStore(t.app, owner.token, { name: 'Resumable' });
    await suspend(store.id);
    expectProblem(await api.post(`/api/admin/stores/${store.id}/resume`).set(auth(owner.token)), 403, 'FORBIDDEN');
    expect((await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true })).status).toBe('suspended');

    expect((await resume(store.id)).body).toEqual({ id: store.id, status: 'active' });
    expect(await t.ctx.master.models.Store.findByPk(store.id, { rejectOnEmpty: true, raw: true })).toMatchObject({
      status: 'active',
      suspendedAt: null,
    });
    await storeApi(store.id).expect(200);
    expect(
      (await api.patch(`/api/stores/${store.id}`).set(auth(owner.token)).send({ name: 'Resumed' }).expect(200)).body
        .name,
    ).toBe('Resumed');

    // A deleted store whose suspension is lifted comes back where its database stands.
    await api.delete(`/api/stores/${store.id}`).set(auth(owner.token)).expect(202);
    await suspend(store.id);
    expect((await resume(store.id)).body).toEqual({ id: store.id, status: 'deleted' });
    expect((await api.post(`/api/stores/${store.id}/restore`).set(auth(owner.token)).expect(200)).body.status).toBe(
      'active',
    );
    expectProblem(await api.post(`/api/admin/stores/${store.id}/resume`).set(auth(admin.token)), 409, 'CONFLICT');
  });
});
