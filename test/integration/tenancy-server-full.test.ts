import type { Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import request from 'supertest';
import type { TenantConnection } from '../../src/db/tenant-types';
import { secretContext } from '../../src/lib/crypto';
import { migrateTenant, seedTenant } from '../../src/provisioning/tenant-db';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { startPasswordServer, type PasswordServer } from '../helpers/password-server';
import { useSuite } from '../helpers/suite';

/**
 * A Postgres server filled by someone else (connections opened outside Tenantry) refuses new sessions with
 * 53300 ("too many clients" / "remaining connection slots are reserved"). That is overload, not a failing
 * store: requests wait and retry within the acquire timeout, then get 503 "busy" with Retry-After; the store
 * is never fenced, and is served at once when the server has room again.
 */
const ACQUIRE_MS = 2000;
const HOST = 'shop.server-full.test';
const t = useSuite('server-full', {
  TENANT_ACQUIRE_TIMEOUT_MS: String(ACQUIRE_MS),
  TENANT_FENCE_MS: '10000',
  TENANT_IDLE_MS: '300',
  // The server is an owner's (external): its budget, for every instance together.
  EXTERNAL_SERVER_CONNECTIONS: '3',
});
let server: Server;
let small: PasswordServer;
let connection: TenantConnection;
let storeId: string;
let adminToken: string;
/** Sessions opened outside Tenantry, filling the server. */
const squatters: pg.Client[] = [];

beforeAll(async () => {
  server = t.listen();
  // max_connections 8, 3 of them reserved for superusers: 5 sessions for everyone else.
  small = await t.open(
    'a small Postgres',
    () => startPasswordServer('sekret', 30000, { max_connections: 8 }),
    (s) => s.stop(),
  );
  const hex = randomBytes(4).toString('hex');
  connection = {
    host: small.host,
    port: small.port,
    database: `shop_${hex}`,
    user: `shop_${hex}`,
    password: randomBytes(12).toString('hex'),
  };
  const admin = await t.pgClient({
    host: small.host,
    port: small.port,
    user: small.user,
    password: small.password,
    database: 'postgres',
  });
  await admin.query(`CREATE ROLE ${connection.user} LOGIN PASSWORD '${connection.password}'`);
  await admin.query(`CREATE DATABASE ${connection.database} OWNER ${connection.user}`);
  await admin.end();
  const { schemaVersion } = await migrateTenant(connection);

  const owner = await registerUser(t.app);
  adminToken = (await registerAdmin(t)).token;
  const m = t.ctx.master.models;
  const store = await m.Store.create({
    name: 'Full server',
    slug: `full-${hex}`,
    ownerId: owner.user.id,
    status: 'active',
  });
  storeId = store.id;
  await m.StoreMember.create({ storeId, userId: owner.user.id, role: 'owner' });
  await m.StoreDatabase.create({
    storeId,
    mode: 'external',
    databaseName: connection.database,
    credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(storeId)),
    status: 'ready',
    schemaVersion,
  });
  await m.StoreHostname.create({ hostname: HOST, storeId, status: 'verified', verifiedAt: new Date() });
  await seedTenant(connection, { id: storeId, name: store.name, slug: store.slug });
  t.defer('the sessions filling the server', () =>
    Promise.all(squatters.splice(0).map((c) => c.end().catch(() => {}))),
  );
});

/** Open sessions as an ordinary role until the server refuses the next one. */
async function fillServer(): Promise<void> {
  for (;;) {
    const client = new pg.Client({ ...connection, connectionTimeoutMillis: 5000 });
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (err) {
      expect((err as { code?: string }).code).toBe('53300');
      return;
    }
    squatters.push(client);
  }
}

async function freeServer(n = squatters.length): Promise<void> {
  await Promise.all(squatters.splice(0, n).map((c) => c.end()));
}

const products = () => request(server).get('/api/store/products').set('Host', HOST);

async function serverStats() {
  const res = await request(server).get('/api/admin/pools').set('Authorization', `Bearer ${adminToken}`).expect(200);
  const entry = (res.body.servers as { key: string; busyRefusals: number; serverRefusals: number }[]).find(
    (s) => s.key === `${small.host}:${small.port}`,
  );
  return { stats: res.body, entry };
}

/** Tenantry's own idle connections closed (TENANT_IDLE_MS): every slot the squatters do not take is free. */
async function drained(): Promise<void> {
  await eventually(async () => expect(t.ctx.tenants.stats().connections.open).toBe(0), 5000);
}

test('a full server answers 503 busy with Retry-After, and the store is not fenced', async () => {
  await products().expect(200);
  await drained();
  await fillServer();
  const refused = await products();
  expectProblem(refused, 503, 'TENANT_UNAVAILABLE');
  expect(refused.body.detail).toMatch(/busy/i);
  expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  const { stats, entry } = await serverStats();
  expect(stats.fenced).toEqual([]);
  expect(stats.fencesTotal).toBe(0);
  expect(entry?.serverRefusals).toBeGreaterThan(0);
  expect(entry?.busyRefusals).toBeGreaterThan(0);
  // The same in /metrics, an owner's server under the one label `external` (its name is not a label).
  const metrics = (await request(server).get('/metrics').set('Authorization', `Bearer ${adminToken}`).expect(200)).text;
  const value = (name: string) => Number(new RegExp(`^${name}\\{server="external"\\} (\\S+)$`, 'm').exec(metrics)?.[1]);
  expect(value('tenantry_tenant_server_refusals_total')).toBeGreaterThan(0);
  expect(value('tenantry_tenant_server_busy_total')).toBeGreaterThan(0);
  expect(value('tenantry_tenant_server_budget')).toBe(3);
  expect(metrics).not.toContain(`:${small.port}"`);

  // Room again: served at once, no fence to sit out.
  await freeServer();
  await products().expect(200);
});

test('a request waiting on a full server is served when a slot frees up within the acquire timeout', async () => {
  await drained();
  await fillServer();
  const pending = products().then((res) => res);
  await new Promise((r) => setTimeout(r, 300));
  await freeServer(1);
  expect((await pending).status).toBe(200);
  await freeServer();
});

test("two instances share the server's budget: together they never open more than it, and both serve", async () => {
  const other = await t.instance();
  const admin = await t.pgClient({
    host: small.host,
    port: small.port,
    user: small.user,
    password: small.password,
    database: 'postgres',
  });
  const seen: number[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const { rows } = await admin.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1',
        [connection.user],
      );
      seen.push(rows[0].n);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const answers = await Promise.all(
    Array.from({ length: 40 }, (_, i) =>
      request(i % 2 ? other.app : t.app)
        .get('/api/store/products')
        .set('Host', HOST),
    ),
  );
  sampling = false;
  await sampler;
  expect(answers.map((r) => r.status).filter((s) => s !== 200)).toEqual([]);
  expect(seen.length).toBeGreaterThan(0);
  expect(Math.max(...seen)).toBeLessThanOrEqual(3);
  // Each instance's view: its lease and every instance's together, within the budget.
  for (const ctx of [t.ctx, other.ctx]) {
    const entry = ctx.tenants.stats().servers.find((s) => s.key === `${small.host}:${small.port}`);
    expect(entry).toMatchObject({ budget: 3, external: true, mode: 'leased' });
    expect(entry!.leasedTotal).toBeLessThanOrEqual(3);
  }
  expect(t.ctx.tenants.stats().fencesTotal + other.ctx.tenants.stats().fencesTotal).toBe(0);
});
