import bcrypt from 'bcrypt';
import { registerUser, uniqueEmail } from '../helpers/app';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { createActiveStore, tenantQuery, type TestStore } from '../helpers/tenants';
import { seedTenant } from '../../src/provisioning/tenant-db';

const t = useSuite('passwords');
let api: RecordingClient;
let owner: Awaited<ReturnType<typeof registerUser>>;
let store: TestStore;

// 100 characters (API.md allows 128) that differ only after the 72nd byte, which is all bcrypt reads.
const SHARED = 'correct horse battery staple, '.repeat(3).slice(0, 90);
const LONG = `${SHARED}-the-first`;
const LONG_OTHER = `${SHARED}-the-other`;
// 36 two-byte characters are 72 bytes: the tail is what tells these apart.
const WIDE = `${'é'.repeat(36)}-first`;
const WIDE_OTHER = `${'é'.repeat(36)}-other`;

const storeCall = (path: string) => api.post(path).set('X-Store-Id', store.id);
const masterHash = async (email: string) =>
  (await t.ctx.master.models.User.findOne({ where: { email }, rejectOnEmpty: true })).passwordHash;
const tenantHash = async (email: string) =>
  (await tenantQuery<{ password_hash: string }>(store, 'SELECT password_hash FROM users WHERE email = $1', [email]))[0]
    .password_hash;

beforeAll(async () => {
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
  store = await createActiveStore(t, { ownerId: owner.user.id });
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

describe('every character of a password counts', () => {
  test('platform login refuses (401) a password that shares the first 72+ bytes but differs after', async () => {
    for (const [password, other] of [
      [LONG, LONG_OTHER],
      [WIDE, WIDE_OTHER],
    ]) {
      const { user } = await registerUser(t.app, { password });
      expectProblem(
        await api.post('/api/auth/login').send({ email: user.email, password: other }),
        401,
        'INVALID_CREDENTIALS',
      );
      await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    }
  });

  test('store login refuses (401) a password that shares the first 72+ bytes but differs after', async () => {
    for (const [password, other] of [
      [LONG, LONG_OTHER],
      [WIDE, WIDE_OTHER],
    ]) {
      const email = uniqueEmail('shopper');
      await storeCall('/api/store/auth/register').send({ email, password, name: 'Shopper' }).expect(201);
      expectProblem(
        await storeCall('/api/store/auth/login').send({ email, password: other }),
        401,
        'INVALID_CREDENTIALS',
      );
      await storeCall('/api/store/auth/login').send({ email, password }).expect(200);
    }
  });

  test('staff created by an admin get the same rule', async () => {
    const email = uniqueEmail('staff');
    await storeCall('/api/store/staff')
      .set('Authorization', `Bearer ${owner.token}`)
      .send({ email, name: 'Sam', password: LONG, role: 'staff' })
      .expect(201);
    expectProblem(
      await storeCall('/api/store/auth/login').send({ email, password: LONG_OTHER }),
      401,
      'INVALID_CREDENTIALS',
    );
    await storeCall('/api/store/auth/login').send({ email, password: LONG }).expect(200);
  });

  test('the stored hash is marked with its scheme and holds no password', async () => {
    const { user } = await registerUser(t.app, { password: LONG });
    const hash = await masterHash(user.email);
    expect(hash).toMatch(/^bcrypt-sha256:\$2b\$\d\d\$.{53}$/);
    expect(hash).not.toContain(SHARED.slice(0, 20));
  });
});

describe('hashes written before the scheme (plain bcrypt) still work', () => {
  test('platform: the old hash signs in, is replaced by a new-scheme hash, and the account keeps working', async () => {
    const email = uniqueEmail('legacy');
    const old = await bcrypt.hash('legacy-password-1', 4);
    await t.ctx.master.models.User.create({ email, passwordHash: old, name: 'Legacy', role: 'user' });

    expectProblem(
      await api.post('/api/auth/login').send({ email, password: 'legacy-password-2' }),
      401,
      'INVALID_CREDENTIALS',
    );
    expect(await masterHash(email)).toBe(old);
    await api.post('/api/auth/login').send({ email, password: 'legacy-password-1' }).expect(200);
    expect(await masterHash(email)).toMatch(/^bcrypt-sha256:/);
    await api.post('/api/auth/login').send({ email, password: 'legacy-password-1' }).expect(200);
    expectProblem(
      await api.post('/api/auth/login').send({ email, password: 'legacy-password-2' }),
      401,
      'INVALID_CREDENTIALS',
    );
  });

  test('store: the old hash signs in, is replaced by a new-scheme hash, and the user keeps working', async () => {
    const email = uniqueEmail('legacy-shopper');
    const old = await bcrypt.hash('legacy-password-1', 4);
    await tenantQuery(
      store,
      `INSERT INTO users (email, password_hash, name, role) VALUES ($1, $2, 'Legacy', 'customer')`,
      [email, old],
    );

    expectProblem(
      await storeCall('/api/store/auth/login').send({ email, password: 'legacy-password-2' }),
      401,
      'INVALID_CREDENTIALS',
    );
    await storeCall('/api/store/auth/login').send({ email, password: 'legacy-password-1' }).expect(200);
    expect(await tenantHash(email)).toMatch(/^bcrypt-sha256:/);
    await storeCall('/api/store/auth/login').send({ email, password: 'legacy-password-1' }).expect(200);
  });
});

test("the owner's platform hash, copied into the store as its first admin, signs in on the store with the same password", async () => {
  const { user } = await registerUser(t.app, { password: LONG });
  const ownStore = await createActiveStore(t, { ownerId: user.id });
  await seedTenant(
    ownStore.connection,
    { id: ownStore.id, name: 'Own', slug: ownStore.slug },
    { email: user.email, passwordHash: await masterHash(user.email), name: 'Owner', platformUserId: user.id },
  );

  const login = (password: string) =>
    api.post('/api/store/auth/login').set('X-Store-Id', ownStore.id).send({ email: user.email, password });
  expectProblem(await login(LONG_OTHER), 401, 'INVALID_CREDENTIALS');
  const res = await login(LONG).expect(200);
  expect(res.body.user).toMatchObject({ email: user.email, role: 'admin' });
});
