import { QueryTypes } from 'sequelize';
import { verifyPassword } from '../../src/lib/passwords';
import { uniqueEmail } from '../helpers/app';
import { countRows } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { useSuite } from '../helpers/suite';

const t = useSuite('register');
let api: RecordingClient;
beforeAll(() => {
  api = recordingClient(t.app);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const body = (overrides: Record<string, unknown> = {}) => ({
  email: uniqueEmail(),
  password: 'correct-horse-1',
  name: 'Ada Lovelace',
  ...overrides,
});

async function userRow(email: string) {
  const rows = await t.ctx.master.sequelize.query<{
    id: string;
    email: string;
    password_hash: string;
    name: string;
    role: string;
  }>('SELECT id, email, password_hash, name, role FROM users WHERE lower(email) = lower(:email)', {
    replacements: { email },
    type: QueryTypes.SELECT,
  });
  return rows;
}

describe('POST /api/auth/register', () => {
  test('returns 201 with the user and a platform token', async () => {
    const input = body();
    const res = await api.post('/api/auth/register').send(input).expect(201);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({
      user: {
        id: expect.stringMatching(/^[0-9a-f-]{36}$/),
        email: input.email,
        name: 'Ada Lovelace',
        role: 'user',
        phone: null,
        avatarUrl: null,
        company: {},
        createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      },
      token: expect.any(String),
    });
    const claims = t.ctx.tokens.verify(res.body.token);
    expect(claims).toMatchObject({ sub: res.body.user.id, typ: 'platform', role: 'user', storeId: null });
  });

  test('stores the e-mail in lower case and the password as a (marked) bcrypt hash, never the password itself', async () => {
    const email = `Mixed.Case-${Date.now()}@Example.TEST`;
    const res = await api
      .post('/api/auth/register')
      .send(body({ email: `  ${email} `, password: 'my plain password' }))
      .expect(201);
    expect(res.body.user.email).toBe(email.toLowerCase());

    const [row] = await userRow(email);
    expect(row.id).toBe(res.body.user.id);
    expect(row.email).toBe(email.toLowerCase());
    expect(row.password_hash).toMatch(/^bcrypt-sha256:\$2[aby]\$\d\d\$.{53}$/);
    expect(row.password_hash).not.toContain('my plain password');
    await expect(verifyPassword('my plain password', row.password_hash)).resolves.toBe(true);
    expect(JSON.stringify(res.body)).not.toMatch(/hash/i);
  });

  test('records who registered, with the request id, in the audit log', async () => {
    const res = await api.post('/api/auth/register').set('X-Request-Id', 'register-req-42').send(body()).expect(201);
    expect(res.headers['x-request-id']).toBe('register-req-42');
    const rows = await t.ctx.master.models.AuditLog.findAll({ where: { actorUserId: res.body.user.id }, raw: true });
    expect(rows).toEqual([
      expect.objectContaining({ action: 'user.registered', targetId: res.body.user.id, requestId: 'register-req-42' }),
    ]);
  });

  test('returns 409 EMAIL_TAKEN when the e-mail is taken, in any letter case, and keeps the first account', async () => {
    const email = uniqueEmail('taken');
    await api
      .post('/api/auth/register')
      .send(body({ email, name: 'First' }))
      .expect(201);
    const before = await countRows(t, 'users');

    const res = await api
      .post('/api/auth/register')
      .send(body({ email: email.toUpperCase(), name: 'Second', password: 'another-password' }));
    expectProblem(res, 409, 'EMAIL_TAKEN');

    expect(await countRows(t, 'users')).toBe(before);
    const rows = await userRow(email);
    expect(rows).toHaveLength(1);
    expect(rows[0].name).toBe('First');
    await expect(verifyPassword('correct-horse-1', rows[0].password_hash)).resolves.toBe(true);
  });

  test('two registrations of one e-mail at the same time create one account and answer 201 and 409', async () => {
    const email = uniqueEmail('race');
    const results = await Promise.all([
      api.post('/api/auth/register').send(body({ email })),
      api.post('/api/auth/register').send(body({ email: email.toUpperCase() })),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual([201, 409]);
    expectProblem(
      results.find((r) => r.status === 409)!,
      409,
      'EMAIL_TAKEN',
    );
    expect(await userRow(email)).toHaveLength(1);
  });

  test('never makes a platform admin, whatever the e-mail (also one the operator once listed as admin)', async () => {
    for (const email of ['Admin@Tenantry.Test', 'root@example.test']) {
      const res = await api.post('/api/auth/register').send(body({ email })).expect(201);
      expect(res.body.user).toMatchObject({ email: email.toLowerCase(), role: 'user' });
      expect(t.ctx.tokens.verify(res.body.token)).toMatchObject({ role: 'user' });
      expect((await userRow(email))[0].role).toBe('user');
      expectProblem(
        await api.get('/api/admin/tenants').set('Authorization', `Bearer ${res.body.token}`),
        403,
        'FORBIDDEN',
      );
    }
  });

  test('accepts passwords of exactly 8 and 128 characters', async () => {
    await api
      .post('/api/auth/register')
      .send(body({ password: '12345678' }))
      .expect(201);
    await api
      .post('/api/auth/register')
      .send(body({ password: 'p'.repeat(128) }))
      .expect(201);
  });

  describe('bad input gets 400 and changes nothing', () => {
    let before: number;
    beforeEach(async () => {
      before = await countRows(t, 'users');
    });
    afterEach(async () => {
      expect(await countRows(t, 'users')).toBe(before);
    });

    test('returns 400 when the password is shorter than 8 characters', async () => {
      const res = await api.post('/api/auth/register').send(body({ password: '1234567' }));
      expectValidationErrors(res, ['password']);
      expect(res.body.errors[0].message).toMatch(/at least 8/);
    });

    test('returns 400 when the password is longer than 128 characters', async () => {
      expectValidationErrors(await api.post('/api/auth/register').send(body({ password: 'p'.repeat(129) })), [
        'password',
      ]);
    });

    test('returns 400 for an e-mail that is not one', async () => {
      expectValidationErrors(await api.post('/api/auth/register').send(body({ email: 'not-an-email' })), ['email']);
    });

    test('returns 400 for a blank name', async () => {
      expectValidationErrors(await api.post('/api/auth/register').send(body({ name: '   ' })), ['name']);
    });

    test('returns 400 naming every missing field', async () => {
      expectValidationErrors(await api.post('/api/auth/register').send({}), ['email', 'password', 'name']);
    });

    test('returns 400 naming every field of the wrong type', async () => {
      const res = await api.post('/api/auth/register').send({ email: 123, password: 12345678, name: ['Ada'] });
      expectValidationErrors(res, ['email', 'password', 'name']);
    });

    test('returns 400 VALIDATION_FAILED for an unknown field (no role can be smuggled in)', async () => {
      const input = body({ role: 'platform_admin' });
      const res = await api.post('/api/auth/register').send(input);
      expectProblem(res, 400, 'VALIDATION_FAILED');
      expect(res.body.errors).toEqual([expect.objectContaining({ message: expect.stringContaining('role') })]);
      expect(await userRow(input.email as string)).toHaveLength(0);
    });

    test('returns 400 for a body that is a JSON array', async () => {
      expectProblem(await api.post('/api/auth/register').send([body()]), 400, 'VALIDATION_FAILED');
    });

    test('returns 400 when there is no body at all', async () => {
      expectProblem(await api.post('/api/auth/register'), 400, 'VALIDATION_FAILED');
    });

    test('returns 415 UNSUPPORTED_MEDIA_TYPE for a form-encoded body', async () => {
      const res = await api.post('/api/auth/register').type('form').send('email=a%40b.test&password=12345678&name=A');
      expectProblem(res, 415, 'UNSUPPORTED_MEDIA_TYPE');
    });

    test('returns 400 MALFORMED_JSON for a body that is not JSON', async () => {
      const res = await api
        .post('/api/auth/register')
        .set('Content-Type', 'application/json')
        .send('{"email": "a@b.test", "password": ');
      expectProblem(res, 400, 'MALFORMED_JSON');
    });

    test('returns 413 PAYLOAD_TOO_LARGE for a body over 100 kB', async () => {
      const res = await api.post('/api/auth/register').send(body({ name: 'x'.repeat(101 * 1024) }));
      expectProblem(res, 413, 'PAYLOAD_TOO_LARGE');
    });
  });
});
