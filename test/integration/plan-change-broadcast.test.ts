import path from 'node:path';
import request from 'supertest';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { expectProblem } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite, type Instance } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';
import { createActiveStore, type TestStore } from '../helpers/tenants';

const ROOT = path.resolve(__dirname, '../..');

/**
 * A plan change made on one instance reaches every instance's cached limits at once (the `plan.changed`
 * bus message), not after the cache's TTL: instance A refuses a creation at the free plan's limit, the
 * plan is upgraded through instance B, and A's very next creation is accepted.
 */
const t = useSuite('plan_change_broadcast', { PAYMENTS_PROVIDER: 'manual' });
type User = Awaited<ReturnType<typeof registerUser>>;
let b: Instance;
let admin: User;

beforeAll(async () => {
  // This suite's own master: a free plan of one product makes its limit cheap to reach.
  await t.ctx.master.sequelize.query(`UPDATE plans SET max_products = 1 WHERE id = 'free'`);
  b = await t.instance();
  admin = await registerAdmin(t);
});

/** An owner on the free plan whose store holds its one product, refused a second one on instance A. */
async function ownerAtFreeLimit(): Promise<{ owner: User; store: TestStore; create: (sku: string) => request.Test }> {
  const owner = await registerUser(t.app);
  const store = await createActiveStore(t, { ownerId: owner.user.id });
  const create = (sku: string) =>
    request(t.app)
      .post('/api/store/products')
      .set({ ...auth(owner.token), 'X-Store-Id': store.id })
      .send({ sku, name: sku, priceCents: 1 });
  await create('first').expect(201);
  expectProblem(await create('refused'), 403, 'PLAN_LIMIT_REACHED');
  return { owner, store, create };
}

test("an owner's upgrade through instance B lifts instance A's refusal at once", async () => {
  const { owner, create } = await ownerAtFreeLimit();
  await request(b.app).post('/api/subscription').set(auth(owner.token)).send({ planId: 'pro' }).expect(200);
  await create('after-upgrade').expect(201);
});

test("a platform admin's plan change through instance B lifts instance A's refusal at once", async () => {
  const { owner, create } = await ownerAtFreeLimit();
  await request(b.app)
    .put(`/api/admin/users/${owner.user.id}/plan`)
    .set(auth(admin.token))
    .send({ planId: 'pro' })
    .expect(200);
  await create('after-admin-change').expect(201);
});

test("an upgrade through an API instance in another process lifts this instance's refusal at once", async () => {
  const { owner, create } = await ownerAtFreeLimit();
  // `npm start` as its own process, serving this suite's master and Redis prefix (no worker, no warm pool).
  const port = await freePort();
  let output = '';
  const child = t.spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'test',
      LOG_LEVEL: 'silent',
      PORT: String(port),
      DATABASE_URL: t.db.url,
      REDIS_URL: t.ctx.config.redisUrl,
      REDIS_PREFIX: t.ctx.redisPrefix,
      WORKER: 'off',
      TENANT_TEMPLATES: 'off',
      TENANT_WARM_POOL: '0',
      TENANT_DB_PREFIX: process.env.TENANT_DB_PREFIX ?? '',
      PAYMENTS_PROVIDER: 'manual',
      JWT_SECRET: process.env.JWT_SECRET ?? '',
      ENCRYPTION_KEYS: process.env.ENCRYPTION_KEYS ?? '',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const other = `http://127.0.0.1:${port}`;
  // Started once it answers (the wait is for start-up, not for the change to spread).
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the other instance exited:\n${output}`);
    const up = await request(other)
      .get('/api/plans')
      .then((r) => r.status === 200)
      .catch(() => false);
    if (up) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  await request(other).post('/api/subscription').set(auth(owner.token)).send({ planId: 'pro' }).expect(200);
  await create('after-remote-upgrade').expect(201);
}, 120_000);
