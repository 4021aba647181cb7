import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { registerUser } from '../helpers/app';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { auth, createStoreViaApi } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * What the OpenAPI document promises of every route: the document served is the one the typed client is
 * generated from, unknown query parameters are refused like unknown body fields, a method a path does not
 * have is a 405 that says which it has, and who may call a route is settled before what its body says.
 */
const t = useSuite('openapi-contract');
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const storeToken = () =>
  t.ctx.tokens.sign({ sub: randomUUID(), typ: 'store', role: 'admin', storeId: randomUUID() }).token;

test('the served /openapi.json is the document the checked-in typed client was generated from', async () => {
  // Not through `api`: the document shows what a connection string looks like, which no other answer may.
  const res = await request(t.app).get('/openapi.json').expect(200);
  const checkedIn = JSON.parse(readFileSync(path.join(__dirname, '../../clients/typescript/openapi.json'), 'utf8'));
  // If this fails: `npm run client`, and commit clients/typescript.
  expect(res.body).toEqual(checkedIn);
});

describe('unknown fields and query parameters', () => {
  test('an unknown body field is named by its path, nested ones too', async () => {
    const user = await registerUser(t.app);
    const res = await api
      .patch('/api/auth/profile')
      .set(auth(user.token))
      .send({ name: 'Ada', nickname: 'A', company: { name: 'X', ceo: 'Y' } });
    expectValidationErrors(res, ['nickname', 'company.ceo']);
    expect(res.body.errors.map((e: { message: string }) => e.message).sort()).toEqual([
      '"ceo" is not a field of this request',
      '"nickname" is not a field of this request',
    ]);
  });

  test('a route without query parameters refuses any, naming each', async () => {
    const user = await registerUser(t.app);
    expectValidationErrors(await api.get('/api/auth/me?expand=stores&debug=1').set(auth(user.token)), [
      'expand',
      'debug',
    ]);
    expectValidationErrors(await api.get('/health?verbose=1'), ['verbose']);
    expectValidationErrors(
      await api.post('/api/auth/login?next=/admin').send({ email: user.user.email, password: user.password }),
      ['next'],
    );
    await api.get('/api/auth/me').set(auth(user.token)).expect(200);
  });

  test('a list refuses a parameter it does not know, and still takes limit and cursor', async () => {
    const user = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, user.token);
    expectValidationErrors(
      await api.get(`/api/stores/${store.id}/credits?limit=5&sort=amount&order=desc`).set(auth(user.token)),
      ['sort', 'order'],
    );
    expectValidationErrors(await api.get('/api/stores?include=deleted').set(auth(user.token)), ['include']);
    const page = await api.get(`/api/stores/${store.id}/credits?limit=5`).set(auth(user.token)).expect(200);
    expect(page.body.transactions).toEqual({ items: [], nextCursor: null });
  });

  test('a cursor that is not one the API gave out is a 400, whether or not it looks like one', async () => {
    const user = await registerUser(t.app);
    const store = await createStoreViaApi(t.app, user.token);
    for (const cursor of ['not a cursor!', 'bm90LWEtY3Vyc29y']) {
      expectProblem(
        await api.get(`/api/stores/${store.id}/credits`).query({ cursor }).set(auth(user.token)),
        400,
        'VALIDATION_FAILED',
      );
    }
  });
});

describe('a method the path does not have', () => {
  test('answers 405 METHOD_NOT_ALLOWED with the methods it has in Allow', async () => {
    const cases: [method: 'put' | 'delete' | 'get' | 'patch', url: string, allow: string][] = [
      ['put', '/api/stores', 'GET, HEAD, POST'],
      ['delete', '/api/auth/login', 'POST'],
      ['get', `/api/stores/${randomUUID()}/database`, 'POST'],
      ['put', `/api/stores/${randomUUID()}`, 'DELETE, GET, HEAD, PATCH'],
      ['patch', '/api/webhooks/stripe', 'POST'],
    ];
    for (const [method, url, allow] of cases) {
      const res = await api[method](url);
      expectProblem(res, 405, 'METHOD_NOT_ALLOWED');
      expect([method, url, res.headers.allow]).toEqual([method, url, allow]);
    }
  });

  test('is told before the store is resolved or the body read; an unknown path is still a 404', async () => {
    // No store named by host, header or token: a GET would be 404 STORE_NOT_FOUND.
    const res = await api.put('/api/store/products').set('Content-Type', 'text/plain').send('not json');
    expectProblem(res, 405, 'METHOD_NOT_ALLOWED');
    expect(res.headers.allow).toBe('GET, HEAD, POST');
    expectProblem(await api.put('/api/no-such-thing'), 404, 'NOT_FOUND');
    // HEAD is answered wherever GET is.
    await request(t.app).head('/health').expect(200);
  });
});

describe('who may call a route is settled before its body is read', () => {
  test('a store token on a platform route with a bad body gets 403 WRONG_TOKEN_TYPE, not 400', async () => {
    const token = storeToken();
    expectProblem(
      await api.post('/api/stores').set(auth(token)).send({ name: 42, slug: 'NO' }),
      403,
      'WRONG_TOKEN_TYPE',
    );
    expectProblem(await api.patch('/api/auth/profile').set(auth(token)).send({ phone: [] }), 403, 'WRONG_TOKEN_TYPE');
    expectProblem(
      await api.post(`/api/stores/${randomUUID()}/database`).set(auth(token)).send({ mode: 'both' }),
      403,
      'WRONG_TOKEN_TYPE',
    );
  });

  test('no token, or a bad one, with a bad body gets 401, not 400', async () => {
    expectProblem(await api.post('/api/stores').send({ name: 42 }), 401, 'UNAUTHENTICATED');
    expectProblem(
      await api.post('/api/auth/switch-store').set(auth('not.a.token')).send({ storeId: 'x' }),
      401,
      'UNAUTHENTICATED',
    );
    expectProblem(await api.get('/api/auth/me?expand=1'), 401, 'UNAUTHENTICATED');
  });
});
