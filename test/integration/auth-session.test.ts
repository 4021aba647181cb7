import { randomUUID } from 'node:crypto';
import jwt from 'jsonwebtoken';
import request from 'supertest';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { eventually, insertStore, startInstance } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';

const t = useSuite('session');
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A token with our secret and claims but whatever else the test wants (expiry, algorithm, issuer). */
function craftToken(
  sub: string,
  payload: Record<string, unknown> = {},
  options: jwt.SignOptions = {},
  secret = t.ctx.config.jwt.secret,
) {
  const now = Math.floor(Date.now() / 1000);
  return jwt.sign(
    { sub, typ: 'platform', role: 'user', storeId: null, jti: randomUUID(), iat: now, exp: now + 600, ...payload },
    secret,
    {
      algorithm: 'HS256',
      issuer: t.ctx.config.jwt.issuer,
      audience: t.ctx.config.jwt.audience,
      ...options,
    },
  );
}

describe('GET /api/auth/me', () => {
  test('returns 200 with the user, no stores and a null active store for a new account', async () => {
    const { token, user } = await registerUser(t.app, { name: 'Grace Hopper' });
    const res = await api.get('/api/auth/me').set(bearer(token)).expect(200);
    expect(res.body).toEqual({
      user: {
        id: user.id,
        email: user.email,
        name: 'Grace Hopper',
        role: 'user',
        phone: null,
        avatarUrl: null,
        company: {},
        createdAt: expect.any(String),
      },
      stores: [],
      activeStoreId: null,
    });
  });

  test('a token issued before the first store still finds it: the active store is the newest one', async () => {
    const { token, user } = await registerUser(t.app);
    await insertStore(t, user.id);
    const newest = await insertStore(t, user.id, { role: 'admin' });
    const res = await api.get('/api/auth/me').set(bearer(token)).expect(200);
    expect(res.body.stores).toHaveLength(2);
    expect(res.body.stores[1]).toMatchObject({ id: newest.id, role: 'admin' });
    expect(res.body.activeStoreId).toBe(newest.id);
  });

  test("the active store is the token's store while the user is a member of it", async () => {
    const { token, user } = await registerUser(t.app);
    const older = await insertStore(t, user.id);
    await insertStore(t, user.id);
    const switched = await api
      .post('/api/auth/switch-store')
      .set(bearer(token))
      .send({ storeId: older.id })
      .expect(200);
    const res = await api.get('/api/auth/me').set(bearer(switched.body.token)).expect(200);
    expect(res.body.activeStoreId).toBe(older.id);
  });

  test("the role comes from the database: an operator's grant shows with a token issued before it", async () => {
    const admin = await registerAdmin(t);
    expect(t.ctx.tokens.verify(admin.token)).toMatchObject({ role: 'user' });
    const res = await api.get('/api/auth/me').set(bearer(admin.token)).expect(200);
    expect(res.body.user.role).toBe('platform_admin');
  });
});

describe('tokens on platform routes', () => {
  let token: string;
  let userId: string;
  beforeAll(async () => {
    ({
      token,
      user: { id: userId },
    } = await registerUser(t.app));
  });

  const routes: [string, (tok?: string) => request.Test][] = [
    ['GET /api/auth/me', (tok) => withAuth(api.get('/api/auth/me'), tok)],
    ['POST /api/auth/logout', (tok) => withAuth(api.post('/api/auth/logout'), tok)],
    ['PATCH /api/auth/profile', (tok) => withAuth(api.patch('/api/auth/profile'), tok).send({ name: 'Changed' })],
    [
      'POST /api/auth/switch-store',
      (tok) => withAuth(api.post('/api/auth/switch-store'), tok).send({ storeId: randomUUID() }),
    ],
  ];
  function withAuth(req: request.Test, tok?: string) {
    return tok === undefined ? req : req.set('Authorization', tok);
  }

  describe.each(routes)('%s', (_name, call) => {
    test('returns 401 UNAUTHENTICATED without a token', async () => {
      expectProblem(await call(), 401, 'UNAUTHENTICATED');
    });

    test('returns 401 UNAUTHENTICATED for a garbage token or a header that is not Bearer', async () => {
      expectProblem(await call('Bearer garbage'), 401, 'UNAUTHENTICATED');
      expectProblem(await call('Bearer '), 401, 'UNAUTHENTICATED');
      expectProblem(await call(`Basic ${Buffer.from('a:b').toString('base64')}`), 401, 'UNAUTHENTICATED');
      expectProblem(await call(token), 401, 'UNAUTHENTICATED');
    });

    test('returns 401 UNAUTHENTICATED for an expired token', async () => {
      const now = Math.floor(Date.now() / 1000);
      expectProblem(
        await call(`Bearer ${craftToken(userId, { iat: now - 3600, exp: now - 1 })}`),
        401,
        'UNAUTHENTICATED',
      );
    });

    test('returns 401 UNAUTHENTICATED for a token signed with another secret, another algorithm or alg none', async () => {
      expectProblem(
        await call(`Bearer ${craftToken(userId, {}, {}, 'some-other-secret-that-is-long-enough-000')}`),
        401,
        'UNAUTHENTICATED',
      );
      expectProblem(await call(`Bearer ${craftToken(userId, {}, { algorithm: 'HS512' })}`), 401, 'UNAUTHENTICATED');
      const payload = jwt.decode(craftToken(userId)) as object;
      expectProblem(await call(`Bearer ${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`), 401, 'UNAUTHENTICATED');
    });

    test('returns 401 UNAUTHENTICATED for a token of another issuer or audience', async () => {
      expectProblem(await call(`Bearer ${craftToken(userId, {}, { issuer: 'elsewhere' })}`), 401, 'UNAUTHENTICATED');
      expectProblem(
        await call(`Bearer ${craftToken(userId, {}, { audience: 'another-api' })}`),
        401,
        'UNAUTHENTICATED',
      );
    });

    test('returns 403 WRONG_TOKEN_TYPE for a store token', async () => {
      const storeToken = t.ctx.tokens.sign({
        sub: randomUUID(),
        typ: 'store',
        role: 'admin',
        storeId: randomUUID(),
      }).token;
      expectProblem(await call(`Bearer ${storeToken}`), 403, 'WRONG_TOKEN_TYPE');
    });
  });

  test('the lower-case "bearer" scheme is accepted', async () => {
    await api.get('/api/auth/me').set('Authorization', `bearer ${token}`).expect(200);
  });
});

describe('POST /api/auth/logout', () => {
  test('returns 204, records the revocation and refuses the token from then on', async () => {
    const { token, user } = await registerUser(t.app);
    const claims = t.ctx.tokens.verify(token);
    await api.get('/api/auth/me').set(bearer(token)).expect(200);

    const res = await api.post('/api/auth/logout').set(bearer(token)).expect(204);
    expect(res.text).toBe('');

    const row = await t.ctx.master.models.RevokedToken.findByPk(claims.jti, { raw: true });
    expect(row).toMatchObject({ jti: claims.jti, userId: user.id });
    expect(new Date(row!.expiresAt).getTime()).toBe(claims.exp * 1000);

    expectProblem(await api.get('/api/auth/me').set(bearer(token)), 401, 'UNAUTHENTICATED');
    expectProblem(await api.post('/api/auth/logout').set(bearer(token)), 401, 'UNAUTHENTICATED');
    expectProblem(
      await api.patch('/api/auth/profile').set(bearer(token)).send({ name: 'After logout' }),
      401,
      'UNAUTHENTICATED',
    );
    expect((await t.ctx.master.models.User.findByPk(user.id))?.name).not.toBe('After logout');
  });

  test('revokes only that token: another session of the same account goes on working', async () => {
    const { token, user, password } = await registerUser(t.app);
    const login = await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    await api.post('/api/auth/logout').set(bearer(token)).expect(204);
    await api.get('/api/auth/me').set(bearer(login.body.token)).expect(200);
  });

  test('another API instance already running refuses the token too (told over Redis)', async () => {
    const other = await startInstance(t);
    try {
      const otherApi = recordingClient(other.app);
      const { token } = await registerUser(t.app);
      await otherApi.get('/api/auth/me').set(bearer(token)).expect(200);

      await api.post('/api/auth/logout').set(bearer(token)).expect(204);

      await eventually(async () => {
        expectProblem(await otherApi.get('/api/auth/me').set(bearer(token)), 401, 'UNAUTHENTICATED');
      });
      // The first instance heard of its own revocation at once.
      expectProblem(await api.get('/api/auth/me').set(bearer(token)), 401, 'UNAUTHENTICATED');
      expectNoLeaks(otherApi.responses);
    } finally {
      await other.ctx.close();
    }
  });

  test('a logout done on the second instance is refused by the first', async () => {
    const other = await startInstance(t);
    try {
      const { token } = await registerUser(t.app);
      await request(other.app).post('/api/auth/logout').set(bearer(token)).expect(204);
      await eventually(async () => {
        expectProblem(await api.get('/api/auth/me').set(bearer(token)), 401, 'UNAUTHENTICATED');
      });
    } finally {
      await other.ctx.close();
    }
  });

  test('an instance started after the logout (a restart) refuses the token: revocations are loaded from the database', async () => {
    const { token } = await registerUser(t.app);
    const keep = await registerUser(t.app);
    await api.post('/api/auth/logout').set(bearer(token)).expect(204);

    const restarted = await startInstance(t);
    try {
      expect(restarted.ctx.revocations.isRevoked(restarted.ctx.tokens.verify(token).jti)).toBe(true);
      expectProblem(await request(restarted.app).get('/api/auth/me').set(bearer(token)), 401, 'UNAUTHENTICATED');
      await request(restarted.app).get('/api/auth/me').set(bearer(keep.token)).expect(200);
    } finally {
      await restarted.ctx.close();
    }
  });
});
