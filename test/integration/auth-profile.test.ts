import { randomUUID } from 'node:crypto';
import { registerUser } from '../helpers/app';
import { insertStore } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { useSuite } from '../helpers/suite';

const t = useSuite('profile');
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
const userRow = async (id: string) => (await t.ctx.master.models.User.findByPk(id, { raw: true }))!;

describe('PATCH /api/auth/profile', () => {
  test('returns 200 with the updated user and saves every field', async () => {
    const { token, user } = await registerUser(t.app);
    const res = await api
      .patch('/api/auth/profile')
      .set(bearer(token))
      .send({
        name: '  Katherine Johnson ',
        phone: '+1 (757) 864-1000',
        avatarUrl: 'https://cdn.example.test/k.png',
        company: { name: 'NACA', vatId: 'US123', address: 'Hampton, VA' },
      })
      .expect(200);
    expect(res.body).toEqual({
      user: {
        id: user.id,
        email: user.email,
        name: 'Katherine Johnson',
        role: 'user',
        phone: '+1 (757) 864-1000',
        avatarUrl: 'https://cdn.example.test/k.png',
        company: { name: 'NACA', vatId: 'US123', address: 'Hampton, VA' },
        createdAt: expect.any(String),
      },
    });
    expect(await userRow(user.id)).toMatchObject({
      name: 'Katherine Johnson',
      phone: '+1 (757) 864-1000',
      avatarUrl: 'https://cdn.example.test/k.png',
      company: { name: 'NACA', vatId: 'US123', address: 'Hampton, VA' },
    });
    // `me` shows the same.
    const me = await api.get('/api/auth/me').set(bearer(token)).expect(200);
    expect(me.body.user).toEqual(res.body.user);
  });

  test('changes only the fields sent; company fields merge, and null clears a field', async () => {
    const { token, user } = await registerUser(t.app, { name: 'Unchanged Name' });
    await api
      .patch('/api/auth/profile')
      .set(bearer(token))
      .send({ phone: '+44 20 7946 0000', company: { name: 'Acme', vatId: 'GB1' } })
      .expect(200);

    const res = await api
      .patch('/api/auth/profile')
      .set(bearer(token))
      .send({ company: { vatId: 'GB2', address: 'London' } })
      .expect(200);
    expect(res.body.user).toMatchObject({
      name: 'Unchanged Name',
      phone: '+44 20 7946 0000',
      company: { name: 'Acme', vatId: 'GB2', address: 'London' },
    });

    const cleared = await api
      .patch('/api/auth/profile')
      .set(bearer(token))
      .send({ phone: null, company: { name: null } })
      .expect(200);
    expect(cleared.body.user).toMatchObject({ phone: null, company: { vatId: 'GB2', address: 'London' } });
    expect(cleared.body.user.company).not.toHaveProperty('name');
    expect(await userRow(user.id)).toMatchObject({
      name: 'Unchanged Name',
      phone: null,
      company: { vatId: 'GB2', address: 'London' },
    });
  });

  test('an empty body changes nothing and returns the user', async () => {
    const { token, user } = await registerUser(t.app, { name: 'Still Me' });
    const res = await api.patch('/api/auth/profile').set(bearer(token)).send({}).expect(200);
    expect(res.body.user).toMatchObject({ id: user.id, name: 'Still Me', phone: null });
  });

  describe('bad input gets 400 and changes nothing', () => {
    let token: string;
    let userId: string;
    let before: Awaited<ReturnType<typeof userRow>>;
    beforeAll(async () => {
      ({
        token,
        user: { id: userId },
      } = await registerUser(t.app, { name: 'Original' }));
      await api
        .patch('/api/auth/profile')
        .set(bearer(token))
        .send({ phone: '+1 555 0100', company: { name: 'Before Ltd' } })
        .expect(200);
      before = await userRow(userId);
    });
    afterEach(async () => {
      expect(await userRow(userId)).toEqual(before);
    });

    test('returns 400 for a phone that is not a phone number', async () => {
      expectValidationErrors(
        await api.patch('/api/auth/profile').set(bearer(token)).send({ name: 'New', phone: 'call me maybe' }),
        ['phone'],
      );
    });

    test('returns 400 for an avatar URL that is not http(s)', async () => {
      expectValidationErrors(
        await api.patch('/api/auth/profile').set(bearer(token)).send({ avatarUrl: 'javascript:alert(1)' }),
        ['avatarUrl'],
      );
      expectValidationErrors(
        await api.patch('/api/auth/profile').set(bearer(token)).send({ avatarUrl: 'ftp://example.test/a.png' }),
        ['avatarUrl'],
      );
    });

    test('returns 400 for a blank name', async () => {
      expectValidationErrors(await api.patch('/api/auth/profile').set(bearer(token)).send({ name: '' }), ['name']);
    });

    test('returns 400 for an unknown field, at the top or inside company', async () => {
      expectProblem(
        await api.patch('/api/auth/profile').set(bearer(token)).send({ name: 'New', email: 'x@y.test' }),
        400,
        'VALIDATION_FAILED',
      );
      expectProblem(
        await api
          .patch('/api/auth/profile')
          .set(bearer(token))
          .send({ company: { name: 'New', iban: 'DE00' } }),
        400,
        'VALIDATION_FAILED',
      );
      expectProblem(
        await api.patch('/api/auth/profile').set(bearer(token)).send({ role: 'platform_admin' }),
        400,
        'VALIDATION_FAILED',
      );
    });

    test('returns 400 naming every field of the wrong type', async () => {
      const res = await api
        .patch('/api/auth/profile')
        .set(bearer(token))
        .send({ name: 5, phone: true, company: { vatId: 7 } });
      expectValidationErrors(res, ['name', 'phone', 'company.vatId']);
    });

    test('returns 400 when company is not an object', async () => {
      expectValidationErrors(await api.patch('/api/auth/profile').set(bearer(token)).send({ company: 'Acme' }), [
        'company',
      ]);
    });
  });
});

describe('POST /api/auth/switch-store', () => {
  test('returns 200 with a token for a store the user is a member of', async () => {
    const { token, user } = await registerUser(t.app);
    const store = await insertStore(t, user.id, { role: 'staff' });
    const res = await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: store.id }).expect(200);
    expect(res.body).toEqual({ token: expect.any(String) });
    expect(t.ctx.tokens.verify(res.body.token)).toMatchObject({
      sub: user.id,
      typ: 'platform',
      role: 'user',
      storeId: store.id,
    });
    const me = await api.get('/api/auth/me').set(bearer(res.body.token)).expect(200);
    expect(me.body.activeStoreId).toBe(store.id);
  });

  test("returns 403 FORBIDDEN for another user's store", async () => {
    const { token } = await registerUser(t.app);
    const { user: owner } = await registerUser(t.app);
    const theirs = await insertStore(t, owner.id);
    expectProblem(
      await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: theirs.id }),
      403,
      'FORBIDDEN',
    );
  });

  test('returns 403 FORBIDDEN for a store that does not exist', async () => {
    const { token } = await registerUser(t.app);
    expectProblem(
      await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: randomUUID() }),
      403,
      'FORBIDDEN',
    );
  });

  test('returns 403 FORBIDDEN for a deleted store the user was a member of', async () => {
    const { token, user } = await registerUser(t.app);
    const deleted = await insertStore(t, user.id, { status: 'deleted' });
    expectProblem(
      await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: deleted.id }),
      403,
      'FORBIDDEN',
    );
  });

  test('returns 400 for a storeId that is not a UUID, or a missing or extra field', async () => {
    const { token } = await registerUser(t.app);
    expectValidationErrors(await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: 'my-shop' }), [
      'storeId',
    ]);
    expectValidationErrors(await api.post('/api/auth/switch-store').set(bearer(token)).send({}), ['storeId']);
    expectProblem(
      await api.post('/api/auth/switch-store').set(bearer(token)).send({ storeId: randomUUID(), role: 'owner' }),
      400,
      'VALIDATION_FAILED',
    );
  });
});
