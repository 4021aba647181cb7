import { grantPlatformAdmin, revokePlatformAdmin } from '../../src/admin/platform-admins';
import { registerUser, uniqueEmail } from '../helpers/app';
import { insertStore } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { useSuite } from '../helpers/suite';

const t = useSuite('login');
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

describe('POST /api/auth/login', () => {
  test('returns 200 with the user, a platform token and no stores for a new account', async () => {
    const { user, password } = await registerUser(t.app);
    const res = await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    expect(res.body).toEqual({
      user: expect.objectContaining({ id: user.id, email: user.email, role: 'user' }),
      token: expect.any(String),
      stores: [],
    });
    expect(Object.keys(res.body.user).sort()).toEqual([
      'avatarUrl',
      'company',
      'createdAt',
      'email',
      'id',
      'name',
      'phone',
      'role',
    ]);
    expect(t.ctx.tokens.verify(res.body.token)).toMatchObject({
      sub: user.id,
      typ: 'platform',
      role: 'user',
      storeId: null,
    });
  });

  test('accepts the e-mail in any letter case and with surrounding spaces', async () => {
    const { user, password } = await registerUser(t.app);
    const res = await api
      .post('/api/auth/login')
      .send({ email: `  ${user.email.toUpperCase()} `, password })
      .expect(200);
    expect(res.body.user.id).toBe(user.id);
  });

  test("lists the user's stores oldest first (not deleted ones) and makes the newest the token's store", async () => {
    const { user, password } = await registerUser(t.app);
    const { user: other } = await registerUser(t.app);
    const first = await insertStore(t, user.id, { name: 'First shop', role: 'owner' });
    const deleted = await insertStore(t, user.id, { status: 'deleted' });
    const second = await insertStore(t, user.id, { role: 'staff', status: 'pending_database', ownerId: other.id });
    await insertStore(t, other.id); // someone else's store

    const res = await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    expect(res.body.stores).toEqual([
      { id: first.id, name: 'First shop', slug: first.slug, status: 'active', role: 'owner' },
      { id: second.id, name: second.name, slug: second.slug, status: 'pending_database', role: 'staff' },
    ]);
    expect(res.body.stores.map((s: { id: string }) => s.id)).not.toContain(deleted.id);
    expect(t.ctx.tokens.verify(res.body.token)).toMatchObject({ storeId: second.id });
  });

  test('answers a wrong password and an unknown e-mail identically with 401 INVALID_CREDENTIALS', async () => {
    const { user } = await registerUser(t.app);
    const wrongPassword = await api.post('/api/auth/login').send({ email: user.email, password: 'not-the-password' });
    const unknownEmail = await api
      .post('/api/auth/login')
      .send({ email: uniqueEmail('nobody'), password: 'not-the-password' });
    expectProblem(wrongPassword, 401, 'INVALID_CREDENTIALS');
    expectProblem(unknownEmail, 401, 'INVALID_CREDENTIALS');
    expect(unknownEmail.body).toEqual(wrongPassword.body);
    expect(unknownEmail.headers['content-type']).toBe(wrongPassword.headers['content-type']);
    expect(unknownEmail.headers['www-authenticate']).toBe(wrongPassword.headers['www-authenticate']);
    // The detail names neither as the culprit.
    expect(wrongPassword.body.detail).toMatch(/e-mail or password/i);
  });

  test('refuses the password of another account', async () => {
    const a = await registerUser(t.app, { password: 'password-of-a' });
    const b = await registerUser(t.app, { password: 'password-of-b' });
    expectProblem(
      await api.post('/api/auth/login').send({ email: a.user.email, password: b.password }),
      401,
      'INVALID_CREDENTIALS',
    );
  });

  test('returns 400 for a missing password, an unknown field or wrong types', async () => {
    const { user } = await registerUser(t.app);
    expectValidationErrors(await api.post('/api/auth/login').send({ email: user.email }), ['password']);
    expectProblem(
      await api.post('/api/auth/login').send({ email: user.email, password: 'x', remember: true }),
      400,
      'VALIDATION_FAILED',
    );
    expectValidationErrors(await api.post('/api/auth/login').send({ email: ['x'], password: 1 }), [
      'email',
      'password',
    ]);
  });

  test("shows the role the master DB holds (the operator's grant or revocation) and never changes it", async () => {
    const { user, password } = await registerUser(t.app, { email: uniqueEmail('ops') });
    await grantPlatformAdmin(t.ctx, user.email, 'test');
    const granted = await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    expect(granted.body.user.role).toBe('platform_admin');
    expect(t.ctx.tokens.verify(granted.body.token)).toMatchObject({ role: 'platform_admin' });

    await revokePlatformAdmin(t.ctx, user.email, 'test');
    const revoked = await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    expect(revoked.body.user.role).toBe('user');
    expect((await t.ctx.master.models.User.findByPk(user.id, { rejectOnEmpty: true })).role).toBe('user');
  });
});
