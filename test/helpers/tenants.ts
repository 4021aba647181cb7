import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { secretContext } from '../../src/lib/crypto';
import type { StoreStatus } from '../../src/models/master';
import { ensureTenantDatabase, ident } from '../../src/db/tenant-server-admin';
import { migrateTenant, seedTenant } from '../../src/provisioning/tenant-db';
import type { TestApp } from './app';
import type { SuiteResources } from './suite';
import { adminQuery, assertTestDatabase, TEST_SERVER_URL } from './db';

export interface TestStore {
  id: string;
  slug: string;
  database: string;
  role: string;
  connection: TenantConnection;
}

const made: { database: string; role: string; server: string }[] = [];

/**
 * An active store with its own freshly migrated database and login role on the test server, registered in
 * the master DB as provisioning would leave it. (Provisioning through the API is tested on its own.)
 */
export async function createActiveStore(
  t: TestApp,
  opts: { ownerId: string; name?: string; hostnames?: string[]; server?: string },
): Promise<TestStore> {
  const hex = randomBytes(5).toString('hex');
  const slug = `store-${hex}`;
  const database = `tenantry_test_t_${hex}`;
  const role = `tenantry_test_r_${hex}`;
  assertTestDatabase(database);
  const server = opts.server ?? TEST_SERVER_URL;
  const password = randomBytes(18).toString('base64url');
  made.push({ database, role, server });
  await ensureTenantDatabase(t.ctx.adminPools, server, { database, role, password });
  const u = new URL(server);
  const connection: TenantConnection = {
    host: u.hostname,
    port: Number(u.port || 5432),
    database,
    user: role,
    password,
  };
  const { schemaVersion } = await migrateTenant(connection);

  const m = t.ctx.master.models;
  const store = await m.Store.create({
    name: opts.name ?? `Store ${hex}`,
    slug,
    ownerId: opts.ownerId,
    status: 'active',
  });
  await m.StoreMember.create({ storeId: store.id, userId: opts.ownerId, role: 'owner' });
  await m.StoreDatabase.create({
    storeId: store.id,
    mode: 'managed',
    server: u.host,
    databaseName: database,
    credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(store.id)),
    status: 'ready',
    schemaVersion,
  });
  // As verification leaves them: these route.
  for (const hostname of opts.hostnames ?? [])
    await m.StoreHostname.create({ hostname, storeId: store.id, status: 'verified', verifiedAt: new Date() });
  await seedTenant(connection, { id: store.id, name: store.name, slug });
  return { id: store.id, slug, database, role, connection };
}

/** Drop every tenant database and role this test file made. */
export async function dropTestTenants(): Promise<void> {
  for (const { database, role, server } of made.splice(0)) {
    assertTestDatabase(database);
    await adminQuery(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`, server);
    await adminQuery(`DROP ROLE IF EXISTS ${ident(role)}`, server);
  }
}

/** Run one statement directly on a store's tenant database (as the store's own login role). */
export async function tenantQuery<R extends Record<string, unknown> = Record<string, unknown>>(
  store: TestStore,
  sql: string,
  values: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ ...store.connection, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return (await client.query<R>(sql, values)).rows;
  } finally {
    await client.end();
  }
}

/** Change a store's status in the master DB and drop its cached state, as the stores service does. */
export async function setStoreStatus(t: TestApp, storeId: string, status: StoreStatus): Promise<void> {
  await t.ctx.master.models.Store.update(
    { status, deletedAt: status === 'deleted' ? new Date() : null },
    { where: { id: storeId } },
  );
  await t.ctx.tenants.invalidate(storeId);
}

/**
 * Samples, every ~10 ms until stopped, how many connections the API holds open to these tenant databases
 * as Postgres sees them (pg_stat_activity); `alsoSample` runs at each sample (e.g. to read the pool's stats).
 * Registered with the suite, so a failed test that never calls stop() still ends it.
 */
export function sampleTenantConnections(
  suite: Pick<SuiteResources, 'defer'>,
  databases: string[],
  alsoSample?: () => void,
) {
  const samples: number[] = [];
  let running = true;
  const client = new pg.Client({ connectionString: TEST_SERVER_URL });
  const done = (async () => {
    await client.connect();
    try {
      while (running) {
        const { rows } = await client.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'tenantry-tenant' AND datname = ANY($1)",
          [databases],
        );
        samples.push(rows[0].n);
        alsoSample?.();
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      await client.end();
    }
  })();
  suite.defer('the connection sampler', () => {
    running = false;
    return done.catch(() => {});
  });
  return {
    samples,
    async stop() {
      running = false;
      await done;
      return samples;
    },
  };
}
