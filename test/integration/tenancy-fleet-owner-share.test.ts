import { randomBytes } from 'node:crypto';
import request from 'supertest';
import type { TenantConnection } from '../../src/db/tenant-types';
import { secretContext } from '../../src/lib/crypto';
import { migrateTenant, seedTenant } from '../../src/provisioning/tenant-db';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { startPasswordServer, type PasswordServer } from '../helpers/password-server';
import { useSuite, type Instance } from '../helpers/suite';

/**
 * An owner's share of a server's budget holds over the fleet: each instance reports its open connections per
 * owner with its heartbeat, and the others count them against the owner's share. Here a managed server with
 * max_connections 20: budget 20 − 3 reserved − headroom 7 = 10, of which an owner may hold 20 %, i.e. 2.
 */
const KEY = () => `${small.host}:${small.port}`;
let small: PasswordServer;
const t = useSuite('fleet-owner-share', async (s) => {
  small = await s.open(
    'a small Postgres',
    () => startPasswordServer('sekret', 30000, { max_connections: 20 }),
    (p) => p.stop(),
  );
  return {
    TENANT_SERVERS: `postgres://${small.user}:${small.password}@${small.host}:${small.port}/postgres`,
    TENANT_SERVER_HEADROOM: '7',
    TENANT_OWNER_SHARE: '20',
    TENANT_ACQUIRE_TIMEOUT_MS: '1000',
    TENANT_IDLE_MS: '300',
    TENANT_LEASE_HEARTBEAT_MS: '200',
  };
});
let other: Instance;
let ownerId: string;
const stores: { id: string; host: string }[] = [];

beforeAll(async () => {
  other = await t.instance();
  const owner = await registerUser(t.app);
  ownerId = owner.user.id;
  const admin = await t.pgClient({
    host: small.host,
    port: small.port,
    user: small.user,
    password: small.password,
    database: 'postgres',
  });
  for (let i = 0; i < 3; i++) {
    const hex = randomBytes(4).toString('hex');
    const connection: TenantConnection = {
      host: small.host,
      port: small.port,
      database: `tenantry_test_shop_${hex}`,
      user: `shop_${hex}`,
      password: randomBytes(12).toString('hex'),
    };
    await admin.query(`CREATE ROLE ${connection.user} LOGIN PASSWORD '${connection.password}'`);
    await admin.query(`CREATE DATABASE ${connection.database} OWNER ${connection.user}`);
    const { schemaVersion } = await migrateTenant(connection);
    const m = t.ctx.master.models;
    const store = await m.Store.create({ name: `Shop ${hex}`, slug: `shop-${hex}`, ownerId, status: 'active' });
    await m.StoreMember.create({ storeId: store.id, userId: ownerId, role: 'owner' });
    await m.StoreDatabase.create({
      storeId: store.id,
      mode: 'managed',
      server: KEY(),
      databaseName: connection.database,
      credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(store.id)),
      status: 'ready',
      schemaVersion,
    });
    const host = `${hex}.fleet-owner.test`;
    await m.StoreHostname.create({ hostname: host, storeId: store.id, status: 'verified', verifiedAt: new Date() });
    await seedTenant(connection, { id: store.id, name: store.name, slug: store.slug });
    stores.push({ id: store.id, host });
  }
});

const serverOf = (i: Instance | typeof t) => i.ctx.tenants.stats().servers.find((s) => s.key === KEY());
const leaseOf = (i: Instance | typeof t) => i.ctx.tenants.servers.get(KEY())?.lease;

test("an owner's connections on one instance count against its share on the others", async () => {
  // Both instances know the server (a first request each), then let their connections go idle and close.
  await request(t.app).get('/api/store/products').set('Host', stores[0].host).expect(200);
  await request(other.app).get('/api/store/products').set('Host', stores[2].host).expect(200);
  expect(serverOf(t)).toMatchObject({ budget: 10, external: false, mode: 'leased' });
  await eventually(async () => {
    expect(t.ctx.tenants.stats().connections.open + other.ctx.tenants.stats().connections.open).toBe(0);
    expect(leaseOf(t)?.othersPerOwner.get(ownerId) ?? 0).toBe(0);
  }, 5000);

  // The first instance holds the owner's whole share: two connections, in two open transactions.
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const held = [stores[0], stores[1]].map(async (s) => (await t.ctx.tenants.forStore(s.id)).transaction(() => gate));
  try {
    // The other instance learns it from the heartbeats...
    await eventually(async () => expect(leaseOf(other)?.othersPerOwner.get(ownerId)).toBe(2), 5000);
    // ...and, the share being taken, keeps the owner to the one connection every instance may always have.
    let releaseOther!: () => void;
    const otherGate = new Promise<void>((resolve) => (releaseOther = resolve));
    const own = (await other.ctx.tenants.forStore(stores[2].id)).transaction(() => otherGate);
    try {
      await eventually(async () => expect(serverOf(other)?.open).toBe(1), 3000);
      const refused = await request(other.app).get('/api/store/products').set('Host', stores[2].host);
      expectProblem(refused, 503, 'TENANT_UNAVAILABLE');
      expect(refused.body.detail).toMatch(/busy/i);
      expect(serverOf(other)?.open).toBe(1);
    } finally {
      releaseOther();
      await own;
    }
  } finally {
    release();
    await Promise.all(held);
  }
  // Its share back, the owner is served on the other instance again.
  await eventually(async () => expect(leaseOf(other)?.othersPerOwner.get(ownerId) ?? 0).toBeLessThan(2), 5000);
  await request(other.app).get('/api/store/products').set('Host', stores[2].host).expect(200);
});
