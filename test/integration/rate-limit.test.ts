import request from 'supertest';
import { createApp } from '../../src/app';
import { createContext } from '../../src/context';
import { registerUser, startTestApp, uniqueEmail, type TestApp } from '../helpers/app';
import { countRows } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';

/** The 429 answer: problem JSON plus a Retry-After of whole seconds within the window. */
function expectRateLimited(res: request.Response, t: TestApp) {
  expectProblem(res, 429, 'RATE_LIMITED');
  expect(res.body.title).toBe('Too Many Requests');
  expect(res.headers['retry-after']).toMatch(/^\d+$/);
  const seconds = Number(res.headers['retry-after']);
  expect(seconds).toBeGreaterThanOrEqual(1);
  expect(seconds).toBeLessThanOrEqual(t.ctx.config.rateLimit.windowMs / 1000);
}

describe('failed logins are rate limited (RATE_LIMIT_LOGIN_MAX=3)', () => {
  let t: TestApp;
  let api: RecordingClient;
  beforeAll(async () => {
    t = await startTestApp('rl_login', { RATE_LIMIT_LOGIN_MAX: '3' });
    api = recordingClient(t.app);
  });
  afterAll(async () => {
    expectNoLeaks(api.responses);
    await t.close();
  });

  test('returns 429 RATE_LIMITED with Retry-After after 3 failures, even for the right password', async () => {
    const { user, password } = await registerUser(t.app);
    for (let i = 0; i < 3; i++) {
      expectProblem(await api.post('/api/auth/login').send({ email: user.email, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    }
    expectRateLimited(await api.post('/api/auth/login').send({ email: user.email, password: 'wrong-again' }), t);
    expectRateLimited(await api.post('/api/auth/login').send({ email: user.email, password }), t);
    // The limit is per address and e-mail, whatever its letter case.
    expectRateLimited(await api.post('/api/auth/login').send({ email: user.email.toUpperCase(), password }), t);
  });

  test('spaces around the e-mail do not start a fresh count (they name the same account)', async () => {
    const { user, password } = await registerUser(t.app);
    const variants = [user.email, ` ${user.email}`, `${user.email}  `, `\t${user.email.toUpperCase()}`];
    for (const [i, email] of variants.slice(0, 3).entries()) {
      expectProblem(await api.post('/api/auth/login').send({ email, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    }
    expectRateLimited(await api.post('/api/auth/login').send({ email: variants[3], password }), t);
  });

  test('counts failures per e-mail: another account from the same address can still sign in', async () => {
    const victim = await registerUser(t.app);
    for (let i = 0; i < 4; i++) await api.post('/api/auth/login').send({ email: victim.user.email, password: 'guess' });
    const other = await registerUser(t.app);
    await api.post('/api/auth/login').send({ email: other.user.email, password: other.password }).expect(200);
  });

  test('does not count successful logins', async () => {
    const { user, password } = await registerUser(t.app);
    for (let i = 0; i < 5; i++) await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
  });

  test('counts an unknown e-mail like a wrong password', async () => {
    const email = uniqueEmail('ghost');
    for (let i = 0; i < 3; i++) expectProblem(await api.post('/api/auth/login').send({ email, password: 'guess' }), 401, 'INVALID_CREDENTIALS');
    expectRateLimited(await api.post('/api/auth/login').send({ email, password: 'guess' }), t);
  });

  test('every instance counts together: a second app on the same Redis prefix is limited too', async () => {
    // Counters live in Redis under the context's prefix, not in the process.
    const ctx = await createContext({ config: t.ctx.config, masterUrl: t.db.url, redisPrefix: t.ctx.redisPrefix });
    try {
      const { user, password } = await registerUser(t.app);
      for (let i = 0; i < 3; i++) await api.post('/api/auth/login').send({ email: user.email, password: 'guess' }).expect(401);
      expectRateLimited(await request(createApp(ctx)).post('/api/auth/login').send({ email: user.email, password }), t);
    } finally {
      await ctx.close();
    }
  });
});

describe('registrations are rate limited (RATE_LIMIT_REGISTER_MAX=3)', () => {
  let t: TestApp;
  let api: RecordingClient;
  beforeAll(async () => {
    t = await startTestApp('rl_register', { RATE_LIMIT_REGISTER_MAX: '3' });
    api = recordingClient(t.app);
  });
  afterAll(async () => {
    expectNoLeaks(api.responses);
    await t.close();
  });

  test('returns 429 RATE_LIMITED with Retry-After after 3 registrations from one address, and creates no 4th account', async () => {
    for (let i = 0; i < 3; i++) await api.post('/api/auth/register').send({ email: uniqueEmail(), password: 'correct-horse-1', name: `User ${i}` }).expect(201);
    const email = uniqueEmail('fourth');
    const res = await api.post('/api/auth/register').send({ email, password: 'correct-horse-1', name: 'Fourth' });
    expectRateLimited(res, t);
    expect(await countRows(t, 'users')).toBe(3);
    expect(await countRows(t, 'users', 'email = :email', { email })).toBe(0);
  });
});
