import { registerUser } from '../helpers/app';
import { startInstance } from '../helpers/fixtures';
import { expectNoLeak, expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';

const ADMIN_ORIGIN = 'https://admin.tenantry.test';

const t = useSuite('http', { CORS_ORIGINS: `${ADMIN_ORIGIN},https://shop.tenantry.test` });
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('health', () => {
  test('GET /health returns 200 {status: ok}', async () => {
    const res = await api.get('/health').expect(200);
    expect(res.body).toEqual({ status: 'ok' });
  });

  test('GET /ready returns 200 when the master DB and Redis answer', async () => {
    const res = await api.get('/ready').expect(200);
    expect(res.body).toEqual({ status: 'ok', checks: { master: 'ok', redis: 'ok' } });
  });

  test('GET /ready returns 503 naming the master DB when it does not answer, while /health stays 200', async () => {
    const other = await startInstance(t);
    try {
      await other.ctx.master.sequelize.close();
      const client = recordingClient(other.app);
      const res = await client.get('/ready').expect(503);
      expect(res.body).toEqual({ status: 'unavailable', checks: { master: 'failed', redis: 'ok' } });
      await client.get('/health').expect(200);
      expectNoLeaks(client.responses);
    } finally {
      await other.ctx.close();
    }
  });
});

describe('errors', () => {
  test('an unknown route returns 404 NOT_FOUND problem JSON', async () => {
    const res = await api.get('/api/nothing-here');
    expectProblem(res, 404, 'NOT_FOUND');
    expect(res.body.title).toBe('Not Found');
    expectProblem(await api.post('/api/auth/unknown').send({}), 404, 'NOT_FOUND');
  });

  test('a request failing on the server answers 500 problem JSON without stack, SQL or database details', async () => {
    const other = await startInstance(t);
    try {
      await other.ctx.master.sequelize.close();
      const client = recordingClient(other.app);
      const { user, password } = await registerUser(t.app);
      const res = await client
        .post('/api/auth/login')
        .set('X-Request-Id', 'broken-master-1')
        .send({ email: user.email, password });
      expect(res.status).toBeGreaterThanOrEqual(500);
      expectProblem(res, res.status, res.body.code);
      expect(res.headers['x-request-id']).toBe('broken-master-1');
      expect(res.text).not.toMatch(/ConnectionManager|sequelize|tenantry_test|127\.0\.0\.1|5432/i);
      expectNoLeaks(client.responses);
    } finally {
      await other.ctx.close();
    }
  });

  test('malformed JSON returns 400 MALFORMED_JSON on every route that takes a body', async () => {
    const { token } = await registerUser(t.app);
    for (const [method, path] of [
      ['post', '/api/auth/register'],
      ['post', '/api/auth/login'],
      ['patch', '/api/auth/profile'],
      ['post', '/api/auth/switch-store'],
    ] as const) {
      const res = await api[method](path)
        .set('Authorization', `Bearer ${token}`)
        .set('Content-Type', 'application/json')
        .send('{"a": 1,,}');
      expectProblem(res, 400, 'MALFORMED_JSON');
    }
    // A JSON scalar is refused as malformed too (only objects and arrays are accepted).
    expectProblem(
      await api.post('/api/auth/login').set('Content-Type', 'application/json').send('"just a string"'),
      400,
      'MALFORMED_JSON',
    );
  });

  test('a body over 100 kB returns 413 PAYLOAD_TOO_LARGE', async () => {
    const res = await api.post('/api/auth/login').send({ email: 'a@b.test', password: 'p'.repeat(120 * 1024) });
    expectProblem(res, 413, 'PAYLOAD_TOO_LARGE');
  });
});

describe('X-Request-Id', () => {
  test('is echoed when the caller sends a sane one, on success and on errors', async () => {
    expect((await api.get('/health').set('X-Request-Id', 'abc-123').expect(200)).headers['x-request-id']).toBe(
      'abc-123',
    );
    const problem = await api.get('/api/auth/me').set('X-Request-Id', 'trace:42.a_b');
    expectProblem(problem, 401, 'UNAUTHENTICATED');
    expect(problem.headers['x-request-id']).toBe('trace:42.a_b');
    expect((await api.get('/nope').set('X-Request-Id', 'nf-1')).headers['x-request-id']).toBe('nf-1');
  });

  test('is generated (a UUID, different each time) when none or an unsafe one is sent', async () => {
    const a = await api.get('/health');
    const b = await api.get('/health');
    expect(a.headers['x-request-id']).toMatch(UUID);
    expect(b.headers['x-request-id']).toMatch(UUID);
    expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
    const unsafe = await api.get('/health').set('X-Request-Id', 'has spaces <script>');
    expect(unsafe.headers['x-request-id']).toMatch(UUID);
    const tooLong = await api.get('/health').set('X-Request-Id', 'x'.repeat(129));
    expect(tooLong.headers['x-request-id']).toMatch(UUID);
  });

  test('is on validation errors and on 413 answers too', async () => {
    const invalid = await api.post('/api/auth/login').set('X-Request-Id', 'v-1').send({});
    expectProblem(invalid, 400, 'VALIDATION_FAILED');
    expect(invalid.headers['x-request-id']).toBe('v-1');
    const large = await api
      .post('/api/auth/login')
      .set('X-Request-Id', 'big-1')
      .send({ x: 'y'.repeat(200 * 1024) });
    expectProblem(large, 413, 'PAYLOAD_TOO_LARGE');
    expect(large.headers['x-request-id']).toBe('big-1');
  });
});

describe('security headers and CORS', () => {
  test('sends helmet headers and no X-Powered-By', async () => {
    const res = await api.get('/health');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['x-frame-options']).toBeDefined();
    expect(res.headers['content-security-policy']).toBeDefined();
    expect(res.headers['x-powered-by']).toBeUndefined();
  });

  test('a listed origin gets CORS headers, with X-Request-Id and Retry-After exposed', async () => {
    const preflight = await api
      .options('/api/auth/login')
      .set('Origin', ADMIN_ORIGIN)
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'content-type,authorization');
    expect(preflight.status).toBe(204);
    expect(preflight.headers['access-control-allow-origin']).toBe(ADMIN_ORIGIN);
    const res = await api.get('/health').set('Origin', ADMIN_ORIGIN).expect(200);
    expect(res.headers['access-control-allow-origin']).toBe(ADMIN_ORIGIN);
    expect(res.headers['access-control-expose-headers']).toMatch(/X-Request-Id/);
    expect(res.headers['access-control-expose-headers']).toMatch(/Retry-After/);
  });

  test('another origin gets no CORS headers', async () => {
    const preflight = await api
      .options('/api/auth/login')
      .set('Origin', 'https://evil.example')
      .set('Access-Control-Request-Method', 'POST');
    expect(preflight.headers['access-control-allow-origin']).toBeUndefined();
    const res = await api.get('/health').set('Origin', 'https://evil.example').expect(200);
    expect(res.headers['access-control-allow-origin']).toBeUndefined();
  });
});

describe('OpenAPI', () => {
  test('GET /openapi.json is an OpenAPI 3.1 document listing every account route', async () => {
    const res = await api.get('/openapi.json').expect(200);
    expect(res.body.openapi).toBe('3.1.0');
    const paths = res.body.paths as Record<string, Record<string, { responses: Record<string, unknown> }>>;
    expect(Object.keys(paths['/api/auth/register'])).toEqual(['post']);
    expect(Object.keys(paths['/api/auth/login'])).toEqual(['post']);
    expect(Object.keys(paths['/api/auth/me'])).toEqual(['get']);
    expect(Object.keys(paths['/api/auth/logout'])).toEqual(['post']);
    expect(Object.keys(paths['/api/auth/profile'])).toEqual(['patch']);
    expect(Object.keys(paths['/api/auth/switch-store'])).toEqual(['post']);
    expect(paths['/health']).toBeDefined();
    expect(paths['/ready']).toBeDefined();
    expect(Object.keys(paths['/api/auth/register'].post.responses)).toEqual(
      expect.arrayContaining(['201', '400', '409', '429']),
    );
    expect(Object.keys(paths['/api/auth/login'].post.responses)).toEqual(
      expect.arrayContaining(['200', '400', '401', '429']),
    );
    expect(Object.keys(paths['/api/auth/me'].get.responses)).toEqual(expect.arrayContaining(['200', '401', '403']));
    expect(res.body.components.schemas).toHaveProperty('Problem');
    expect(res.body.components.schemas).toHaveProperty('User');
    expect(JSON.stringify(res.body.components.schemas.User)).not.toMatch(/password/i);
  });

  test('GET /docs/ serves Swagger UI', async () => {
    const res = await api.get('/docs/').expect(200);
    expect(res.headers['content-type']).toMatch(/text\/html/);
    expect(res.text).toMatch(/swagger/i);
  });
});

test('the leak check itself catches a stack trace and a password hash', () => {
  const fake = (text: string) => ({ text, status: 500 }) as Parameters<typeof expectNoLeak>[0];
  expect(() => expectNoLeak(fake('{"detail":"Error: boom\\n    at Object.<anonymous> (/work/src/x.ts:1:2)"}'))).toThrow(
    /stack trace/,
  );
  expect(() => expectNoLeak(fake('{"passwordHash":"x"}'))).toThrow(/password hash/);
  expect(() => expectNoLeak(fake('{"h":"$2b$12$abcdefghijklmnopqrstuv"}'))).toThrow(/bcrypt/);
  expect(() => expectNoLeak(fake('{"detail":"connect to postgres://u:p@db/x failed"}'))).toThrow(/database URL/);
  expect(() => expectNoLeak(fake('{"ok":true,"createdAt":"2024-01-01T10:00:00.000Z"}'))).not.toThrow();
});
