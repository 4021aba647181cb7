import { randomUUID } from 'node:crypto';
import type { Express } from 'express';
import jwt, { type Secret } from 'jsonwebtoken';
import request from 'supertest';
import {
  ADMIN_SESSION_COOKIE,
  ADMIN_SESSION_TYP,
  adminSessionAudience,
  adminSessionKey,
} from '../../src/admin/admin-session';
import { revokePlatformAdmin } from '../../src/admin/platform-admins';
import type { AppContext } from '../../src/app-context';
import { QueueName } from '../../src/queue/queues';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * A browser's way into the queue board: a platform admin trades a bearer token for a short cookie scoped to
 * /admin, which opens the board and nothing else; changes made with it must come from our own pages.
 */
const t = useSuite('admin_session');
let api: RecordingClient;
let production: { ctx: AppContext; app: Express } | undefined;
let admin: Awaited<ReturnType<typeof registerAdmin>>;
let user: Awaited<ReturnType<typeof registerUser>>;

beforeAll(async () => {
  api = recordingClient(t.app);
  admin = await registerAdmin(t);
  user = await registerUser(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

/** Our cookie as a browser would send it back (`name=value`), from a Set-Cookie answer. */
function sessionCookie(res: request.Response): string {
  const set = ([] as string[])
    .concat(res.headers['set-cookie'] ?? [])
    .find((c) => c.startsWith(`${ADMIN_SESSION_COOKIE}=`));
  if (!set) throw new Error(`no session cookie in ${res.status} ${JSON.stringify(res.headers['set-cookie'])}`);
  return set.split(';')[0];
}

async function openSession(token: string, app: Express = t.app): Promise<string> {
  return sessionCookie(await request(app).post('/api/admin/session').set(auth(token)).expect(200));
}

const cookieWith = (value: string) => `${ADMIN_SESSION_COOKIE}=${value}`;
const sessionToken = (cookie: string) => cookie.slice(ADMIN_SESSION_COOKIE.length + 1);
const jwtSettings = () => t.ctx.config.jwt;

/** A token made like a session token, with whatever key and claims a test wants to try. */
function craft(claims: Record<string, unknown>, opts: { key?: Secret; audience?: string; expiresIn?: number } = {}) {
  const s = jwtSettings();
  return jwt.sign({ typ: ADMIN_SESSION_TYP, sid: randomUUID(), ...claims }, opts.key ?? adminSessionKey(s.secret), {
    algorithm: 'HS256',
    issuer: s.issuer,
    audience: opts.audience ?? adminSessionAudience(s),
    subject: admin.user.id,
    jwtid: randomUUID(),
    expiresIn: opts.expiresIn ?? 600,
  });
}

describe('opening a session', () => {
  test('a platform admin gets a 15-minute HttpOnly, SameSite=Strict cookie for /admin (not Secure outside production)', async () => {
    const res = await api.post('/api/admin/session').set(auth(admin.token)).expect(200);
    const expiresAt = Date.parse(res.body.expiresAt);
    expect(expiresAt - Date.now()).toBeGreaterThan(14 * 60_000);
    expect(expiresAt - Date.now()).toBeLessThanOrEqual(15 * 60_000);
    const set = ([] as string[])
      .concat(res.headers['set-cookie'])
      .find((c) => c.startsWith(`${ADMIN_SESSION_COOKIE}=`))!;
    const attributes = set
      .split(';')
      .slice(1)
      .map((a) => a.trim().toLowerCase());
    expect(attributes).toEqual(expect.arrayContaining(['path=/admin', 'httponly', 'samesite=strict']));
    expect(attributes.find((a) => a.startsWith('max-age='))).toMatch(/^max-age=(899|900)$/);
    expect(attributes).not.toContain('secure');
  });

  test('in production the cookie is Secure as well', async () => {
    production = await t.instance({
      NODE_ENV: 'production',
      PAYMENTS_PROVIDER: 'stripe',
      STRIPE_WEBHOOK_SECRET: 'whsec_test',
    });
    const res = await request(production.app).post('/api/admin/session').set(auth(admin.token)).expect(200);
    const set = ([] as string[])
      .concat(res.headers['set-cookie'])
      .find((c) => c.startsWith(`${ADMIN_SESSION_COOKIE}=`))!;
    expect(set.split(';').map((a) => a.trim().toLowerCase())).toContain('secure');
  });

  test('a user who is no platform admin gets 403, a caller without a token 401, and no cookie', async () => {
    const refused = await api.post('/api/admin/session').set(auth(user.token));
    expectProblem(refused, 403, 'FORBIDDEN');
    expect(refused.headers['set-cookie']).toBeUndefined();
    expectProblem(await api.post('/api/admin/session'), 401, 'UNAUTHENTICATED');
  });

  test('the sign-in page flow: log in, open a session, then the board opens in the browser with the cookie alone', async () => {
    const login = await api
      .post('/api/auth/login')
      .send({ email: admin.user.email, password: admin.password })
      .expect(200);
    const cookie = await openSession(login.body.token);
    const board = await request(t.app).get('/admin/queues').set('Cookie', cookie).expect(200);
    expect(board.headers['content-type']).toMatch(/text\/html/);
    const queues = await request(t.app).get('/admin/queues/api/queues').set('Cookie', cookie).expect(200);
    expect(queues.body.queues.map((q: { name: string }) => q.name).sort()).toEqual(Object.values(QueueName).sort());
  });
});

describe('what the cookie is, and is not', () => {
  test('without a cookie or a bearer token the board answers 401', async () => {
    expectProblem(await api.get('/admin/queues'), 401, 'UNAUTHENTICATED');
    expectProblem(await api.get('/admin/queues/api/queues'), 401, 'UNAUTHENTICATED');
  });

  test('a forged, expired or other-purpose session cookie is refused with 401', async () => {
    const genuine = sessionToken(await openSession(admin.token));
    const [head, body, signature] = genuine.split('.');
    const tampered = `${head}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(body, 'base64url').toString()), sub: user.user.id })).toString('base64url')}.${signature}`;
    const refused = {
      'bad signature': `${head}.${body}.${signature.slice(0, -2)}${signature.endsWith('AA') ? 'BB' : 'AA'}`,
      'claims changed': tampered,
      'signed with JWT_SECRET itself': craft({}, { key: jwtSettings().secret }),
      expired: craft({}, { expiresIn: -10 }),
      'another typ': craft({ typ: 'platform' }),
      'the API audience': craft({}, { audience: jwtSettings().audience }),
      'no sid': craft({ sid: undefined }),
      garbage: 'not-a-token',
    };
    for (const [what, value] of Object.entries(refused)) {
      const res = await api.get('/admin/queues').set('Cookie', cookieWith(value));
      if (res.status !== 401) throw new Error(`${what}: ${res.status}`);
      expectProblem(res, 401, 'UNAUTHENTICATED');
    }
  });

  test("an admin's ordinary platform or store-style API token put in the cookie is refused with 401", async () => {
    expectProblem(await api.get('/admin/queues').set('Cookie', cookieWith(admin.token)), 401, 'UNAUTHENTICATED');
    const storeLike = t.ctx.tokens.sign({
      sub: admin.user.id,
      typ: 'store',
      role: 'admin',
      storeId: randomUUID(),
    }).token;
    expectProblem(await api.get('/admin/queues').set('Cookie', cookieWith(storeLike)), 401, 'UNAUTHENTICATED');
  });

  test('the session token is no API token: as a Bearer it gets 401 on the API, /metrics and the board', async () => {
    const token = sessionToken(await openSession(admin.token));
    for (const path of ['/api/auth/me', '/api/admin/pools', '/metrics', '/admin/queues']) {
      expectProblem(await api.get(path).set(auth(token)), 401, 'UNAUTHENTICATED');
    }
    expectProblem(await api.post('/api/admin/session').set(auth(token)), 401, 'UNAUTHENTICATED');
  });

  test('the cookie opens only the admin pages: the admin API does not take it', async () => {
    const cookie = await openSession(admin.token);
    expectProblem(await api.get('/api/admin/pools').set('Cookie', cookie), 401, 'UNAUTHENTICATED');
    expectProblem(await api.get('/metrics').set('Cookie', cookie), 401, 'UNAUTHENTICATED');
  });

  test('the cookie of an admin whose role was revoked since is refused with 403', async () => {
    const former = await registerAdmin(t);
    const cookie = await openSession(former.token);
    await request(t.app).get('/admin/queues').set('Cookie', cookie).expect(200);
    await revokePlatformAdmin(t.ctx, former.user.email, 'test-operator');
    await eventually(async () => expectProblem(await api.get('/admin/queues').set('Cookie', cookie), 403, 'FORBIDDEN'));
  });

  test('logging out the platform token the session came from ends the session', async () => {
    const login = await api
      .post('/api/auth/login')
      .send({ email: admin.user.email, password: admin.password })
      .expect(200);
    const cookie = await openSession(login.body.token);
    await request(t.app).get('/admin/queues').set('Cookie', cookie).expect(200);
    await api.post('/api/auth/logout').set(auth(login.body.token)).expect(204);
    await eventually(async () =>
      expectProblem(await api.get('/admin/queues').set('Cookie', cookie), 401, 'UNAUTHENTICATED'),
    );
  });

  test('DELETE /api/admin/session makes the browser drop the cookie', async () => {
    const res = await api.delete('/api/admin/session').expect(204);
    const set = ([] as string[])
      .concat(res.headers['set-cookie'])
      .find((c) => c.startsWith(`${ADMIN_SESSION_COOKIE}=`))!;
    const attributes = set.split(';').map((a) => a.trim().toLowerCase());
    expect(attributes[0]).toBe(`${ADMIN_SESSION_COOKIE}=`);
    expect(attributes).toContain('path=/admin');
    expect(Date.parse(attributes.find((a) => a.startsWith('expires='))!.slice('expires='.length))).toBeLessThan(
      Date.now(),
    );
  });
});

describe('changes through the board with the cookie (CSRF)', () => {
  const HOST = 'admin.example.test';
  const pause = (cookie: string) =>
    api.put(`/admin/queues/api/queues/${QueueName.maintenance}/pause`).set('Host', HOST).set('Cookie', cookie);
  const isPaused = () => t.ctx.queues.get(QueueName.maintenance).isPaused();

  test('a foreign Origin, or none at all, is refused with 403 and changes nothing', async () => {
    const cookie = await openSession(admin.token);
    expectProblem(await pause(cookie).set('Origin', 'https://evil.example'), 403, 'FORBIDDEN');
    expectProblem(await pause(cookie).set('Origin', `https://${HOST}`), 403, 'FORBIDDEN');
    expectProblem(await pause(cookie).set('Origin', 'null'), 403, 'FORBIDDEN');
    expectProblem(await pause(cookie).set('Referer', 'https://evil.example/admin/queues'), 403, 'FORBIDDEN');
    expectProblem(await pause(cookie), 403, 'FORBIDDEN');
    expect(await isPaused()).toBe(false);
  });

  test('our own Origin (or Referer) is allowed, and a bearer token needs neither', async () => {
    const cookie = await openSession(admin.token);
    await pause(cookie).set('Origin', `http://${HOST}`).expect(200);
    expect(await isPaused()).toBe(true);
    await api
      .put(`/admin/queues/api/queues/${QueueName.maintenance}/resume`)
      .set('Host', HOST)
      .set('Cookie', cookie)
      .set('Referer', `http://${HOST}/admin/queues/queue/maintenance`)
      .expect(200);
    expect(await isPaused()).toBe(false);
    await api.put(`/admin/queues/api/queues/${QueueName.maintenance}/pause`).set(auth(admin.token)).expect(200);
    await api.put(`/admin/queues/api/queues/${QueueName.maintenance}/resume`).set(auth(admin.token)).expect(200);
    expect(await isPaused()).toBe(false);
  });
});

describe('the sign-in page', () => {
  test('GET /admin/login is a form whose script is a file of its own (the CSP refuses inline scripts)', async () => {
    const page = await api.get('/admin/login').expect(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    expect(page.headers['content-security-policy']).toMatch(/script-src 'self'/);
    expect(page.text).toMatch(/<form id="sign-in" method="post">/);
    expect(page.text).toMatch(/type="password"/);
    const scripts = [...page.text.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
    expect(scripts.map((s) => s[1].trim())).toEqual(['src="/admin/login.js" defer']);
    expect(scripts.every((s) => s[2] === '')).toBe(true);

    const script = await api.get('/admin/login.js').expect(200);
    expect(script.headers['content-type']).toMatch(/javascript/);
    expect(script.text).toContain("'/api/auth/login'");
    expect(script.text).toContain("'/api/admin/session'");
    expect(script.text).toContain("location.assign('/admin/queues')");
  });
});
