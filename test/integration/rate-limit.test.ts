import request from 'supertest';
import { createApp } from '../../src/app';
import { createContext } from '../../src/context';
import { registerUser, uniqueEmail, type TestApp } from '../helpers/app';
import { countRows } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, type TestStore } from '../helpers/tenants';

/** The 429 answer: problem JSON plus a Retry-After of whole seconds within the window. */
function expectRateLimited(res: request.Response, t: TestApp) {
  expectProblem(res, 429, 'RATE_LIMITED');
  expect(res.body.title).toBe('Too Many Requests');
  expect(res.headers['retry-after']).toMatch(/^\d+$/);
  const seconds = Number(res.headers['retry-after']);
  expect(seconds).toBeGreaterThanOrEqual(1);
  expect(seconds).toBeLessThanOrEqual(t.ctx.config.rateLimit.windowMs / 1000);
}

/** Every rate-limit counter this app keeps in Redis. */
const limiterKeys = (t: TestApp) => t.ctx.redis.keys(`${t.ctx.redisPrefix}:rl:*`);

const HUGE_EMAIL = `${'a'.repeat(90 * 1024)}@example.test`;

describe('failed logins are rate limited (RATE_LIMIT_LOGIN_MAX=3)', () => {
  const t = useSuite('rl_login', { RATE_LIMIT_LOGIN_MAX: '3' });
  let api: RecordingClient;
  beforeAll(() => {
    api = recordingClient(t.app);
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  test('returns 429 RATE_LIMITED with Retry-After after 3 failures, even for the right password', async () => {
    const { user, password } = await registerUser(t.app);
    for (let i = 0; i < 3; i++) {
      expectProblem(
        await api.post('/api/auth/login').send({ email: user.email, password: `wrong-${i}` }),
        401,
        'INVALID_CREDENTIALS',
      );
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
      expectProblem(
        await api.post('/api/auth/login').send({ email, password: `wrong-${i}` }),
        401,
        'INVALID_CREDENTIALS',
      );
    }
    expectRateLimited(await api.post('/api/auth/login').send({ email: variants[3], password }), t);
  });

  test('a body that is not valid is refused with 400 and not counted', async () => {
    const { user, password } = await registerUser(t.app);
    for (const body of [
      { email: user.email },
      { email: user.email, password: '' },
      { email: user.email, password: 'x'.repeat(129) },
      { email: user.email, password: 'guess', extra: 1 },
      { email: user.email, password: 42 },
    ]) {
      expectProblem(await api.post('/api/auth/login').send(body), 400, 'VALIDATION_FAILED');
    }
    expectProblem(
      await api.post('/api/auth/login').send({ email: user.email, password: 'guess' }),
      401,
      'INVALID_CREDENTIALS',
    );
    await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
  });

  test('a 90 kB e-mail is refused with 400 and leaves no counter in Redis', async () => {
    const before = await limiterKeys(t);
    expectProblem(
      await api.post('/api/auth/login').send({ email: HUGE_EMAIL, password: 'guess' }),
      400,
      'VALIDATION_FAILED',
    );
    expect(await limiterKeys(t)).toEqual(before);
    expect(Math.max(0, ...before.map((k) => k.length))).toBeLessThan(400);
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
    for (let i = 0; i < 3; i++)
      expectProblem(await api.post('/api/auth/login').send({ email, password: 'guess' }), 401, 'INVALID_CREDENTIALS');
    expectRateLimited(await api.post('/api/auth/login').send({ email, password: 'guess' }), t);
  });

  test('every instance counts together: a second app on the same Redis prefix is limited too', async () => {
    // Counters live in Redis under the context's prefix, not in the process.
    const ctx = await createContext({ config: t.ctx.config, masterUrl: t.db.url, redisPrefix: t.ctx.redisPrefix });
    try {
      const { user, password } = await registerUser(t.app);
      for (let i = 0; i < 3; i++)
        await api.post('/api/auth/login').send({ email: user.email, password: 'guess' }).expect(401);
      expectRateLimited(await request(createApp(ctx)).post('/api/auth/login').send({ email: user.email, password }), t);
    } finally {
      await ctx.close();
    }
  });
});

describe('registrations are rate limited (RATE_LIMIT_REGISTER_MAX=3)', () => {
  const t = useSuite('rl_register', { RATE_LIMIT_REGISTER_MAX: '3' });
  let api: RecordingClient;
  beforeAll(() => {
    api = recordingClient(t.app);
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  test('returns 429 RATE_LIMITED with Retry-After after 3 registrations from one address, and creates no 4th account', async () => {
    for (let i = 0; i < 3; i++)
      await api
        .post('/api/auth/register')
        .send({ email: uniqueEmail(), password: 'correct-horse-1', name: `User ${i}` })
        .expect(201);
    const email = uniqueEmail('fourth');
    const res = await api.post('/api/auth/register').send({ email, password: 'correct-horse-1', name: 'Fourth' });
    expectRateLimited(res, t);
    expect(await countRows(t, 'users')).toBe(3);
    expect(await countRows(t, 'users', 'email = :email', { email })).toBe(0);
  });
});

describe('registrations that are not valid are not counted (RATE_LIMIT_REGISTER_MAX=3)', () => {
  const t = useSuite('rl_register_invalid', { RATE_LIMIT_REGISTER_MAX: '3' });
  let api: RecordingClient;
  beforeAll(() => {
    api = recordingClient(t.app);
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  test('5 refused bodies (400) leave the address its 3 registrations', async () => {
    for (const body of [
      {},
      { email: 'not-an-email', password: 'correct-horse-1', name: 'X' },
      { email: uniqueEmail(), password: 'short', name: 'X' },
      { email: HUGE_EMAIL, password: 'correct-horse-1', name: 'X' },
      { email: uniqueEmail(), password: 'correct-horse-1', name: '' },
    ]) {
      expectProblem(await api.post('/api/auth/register').send(body), 400, 'VALIDATION_FAILED');
    }
    for (let i = 0; i < 3; i++)
      await api
        .post('/api/auth/register')
        .send({ email: uniqueEmail(), password: 'correct-horse-1', name: `User ${i}` })
        .expect(201);
    expectRateLimited(
      await api.post('/api/auth/register').send({ email: uniqueEmail(), password: 'correct-horse-1', name: 'Fourth' }),
      t,
    );
  });
});

describe('store logins are rate limited on the validated e-mail (RATE_LIMIT_LOGIN_MAX=3)', () => {
  const t = useSuite('rl_store_login', { RATE_LIMIT_LOGIN_MAX: '3' });
  let api: RecordingClient;
  let store: TestStore;
  let other: TestStore;
  beforeAll(async () => {
    api = recordingClient(t.app);
    const owner = await registerUser(t.app);
    [store, other] = await Promise.all([
      createActiveStore(t, { ownerId: owner.user.id }),
      createActiveStore(t, { ownerId: owner.user.id }),
    ]);
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  const login = (s: TestStore, body: object) => api.post('/api/store/auth/login').set('X-Store-Id', s.id).send(body);
  async function customer(s: TestStore) {
    const email = uniqueEmail('shopper');
    await api
      .post('/api/store/auth/register')
      .set('X-Store-Id', s.id)
      .send({ email, password: 'correct-horse-1', name: 'Shopper' })
      .expect(201);
    return { email, password: 'correct-horse-1' };
  }

  test('spaces or capitals around the e-mail do not start a fresh count: 429 even for the right password', async () => {
    const { email, password } = await customer(store);
    for (const [i, variant] of [email, ` ${email}`, `${email.toUpperCase()}  `].entries()) {
      expectProblem(await login(store, { email: variant, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    }
    expectRateLimited(await login(store, { email: ` ${email}`, password }), t);
    expectRateLimited(await login(store, { email: `\t${email.toUpperCase()}`, password }), t);
  });

  test('a body that is not valid is refused with 400 and not counted', async () => {
    const { email, password } = await customer(store);
    for (const body of [
      { email },
      { email, password: '' },
      { email, password: 'x'.repeat(129) },
      { email: 'not-an-email', password: 'guess' },
      { email, password: 'guess', role: 'admin' },
    ]) {
      expectProblem(await login(store, body), 400, 'VALIDATION_FAILED');
    }
    expectProblem(await login(store, { email, password: 'guess' }), 401, 'INVALID_CREDENTIALS');
    await login(store, { email, password }).expect(200);
  });

  test('a 90 kB e-mail is refused with 400 and leaves no counter in Redis', async () => {
    const before = await limiterKeys(t);
    expectProblem(await login(store, { email: HUGE_EMAIL, password: 'guess' }), 400, 'VALIDATION_FAILED');
    expect(await limiterKeys(t)).toEqual(before);
    expect(Math.max(0, ...before.map((k) => k.length))).toBeLessThan(400);
  });

  test('counts per store: the same e-mail limited on one store still signs in on another', async () => {
    const { email, password } = await customer(store);
    await api
      .post('/api/store/auth/register')
      .set('X-Store-Id', other.id)
      .send({ email, password, name: 'Shopper' })
      .expect(201);
    for (let i = 0; i < 3; i++)
      expectProblem(await login(store, { email, password: 'guess' }), 401, 'INVALID_CREDENTIALS');
    expectRateLimited(await login(store, { email, password }), t);
    await login(other, { email, password }).expect(200);
  });
});

describe('failed logins per account, whatever the address (RATE_LIMIT_ACCOUNT_MAX=5, RATE_LIMIT_LOGIN_MAX=3)', () => {
  // Behind a trusted proxy, X-Forwarded-For gives each request its own client address.
  const t = useSuite('rl_account', { RATE_LIMIT_LOGIN_MAX: '3', RATE_LIMIT_ACCOUNT_MAX: '5', TRUST_PROXY: 'on' });
  let api: RecordingClient;
  let store: TestStore;
  let nextAddress = 0;
  beforeAll(async () => {
    api = recordingClient(t.app);
    const owner = await registerUser(t.app);
    store = await createActiveStore(t, { ownerId: owner.user.id });
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  const fromNewAddress = () => `198.51.100.${++nextAddress}`;
  const platformLogin = (body: object) =>
    api.post('/api/auth/login').set('X-Forwarded-For', fromNewAddress()).send(body);
  const storeLogin = (body: object) =>
    api.post('/api/store/auth/login').set('X-Store-Id', store.id).set('X-Forwarded-For', fromNewAddress()).send(body);

  test('platform login: after 5 failures from 5 addresses, a 6th address gets 429 RATE_LIMITED with Retry-After, even with the right password', async () => {
    const { user, password } = await registerUser(t.app);
    for (let i = 0; i < 5; i++)
      expectProblem(await platformLogin({ email: user.email, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    expectRateLimited(await platformLogin({ email: user.email, password }), t);
    // Other accounts, from the same addresses too, are not affected.
    nextAddress -= 5;
    const other = await registerUser(t.app);
    await platformLogin({ email: other.user.email, password: other.password }).expect(200);
  });

  test('platform login: successful logins do not count towards the account limit', async () => {
    const { user, password } = await registerUser(t.app);
    for (let i = 0; i < 4; i++)
      expectProblem(await platformLogin({ email: user.email, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    for (let i = 0; i < 5; i++) await platformLogin({ email: user.email, password }).expect(200);
  });

  test('store login: after 5 failures from 5 addresses, a 6th address gets 429 RATE_LIMITED, even with the right password', async () => {
    const email = uniqueEmail('shopper');
    const password = 'correct-horse-1';
    await api
      .post('/api/store/auth/register')
      .set('X-Store-Id', store.id)
      .send({ email, password, name: 'Shopper' })
      .expect(201);
    for (let i = 0; i < 4; i++)
      expectProblem(await storeLogin({ email, password: `wrong-${i}` }), 401, 'INVALID_CREDENTIALS');
    // A success in between is not counted.
    await storeLogin({ email, password }).expect(200);
    expectProblem(
      await storeLogin({ email: ` ${email.toUpperCase()}`, password: 'wrong-4' }),
      401,
      'INVALID_CREDENTIALS',
    );
    expectRateLimited(await storeLogin({ email, password }), t);
  });
});
