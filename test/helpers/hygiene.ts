import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { ensureTenantDatabase } from '../../src/db/tenant-server-admin';
import { secretContext } from '../../src/lib/crypto';
import { migrateTenant, seedTenant } from '../../src/provisioning/tenant-db';
import type { TestApp } from './app';
import { adminQuery, TEST_SERVER_URL } from './db';
import type { Suite } from './suite';

/**
 * A TENANT_DB_PREFIX of the suite's own (it says "test", as the tear-down requires): reconcile lists only names
 * with it, so it never sees — nor touches — other suites' databases on the shared server.
 */
export const uniquePrefix = (label: string) => `tenantry_test_${label}_${randomBytes(3).toString('hex')}_`;

export interface PrefixedStore {
  id: string;
  database: string;
  connection: TenantConnection;
}

/**
 * An active store with a freshly migrated database named as provisioning names it (`<prefix><store id>`, its
 * role alike), registered as provisioning leaves it; the app's tear-down drops it with the other managed ones.
 */
export async function createPrefixedStore(
  t: TestApp,
  ownerId: string,
  opts: { status?: 'active' | 'provisioning'; withDatabase?: boolean } = {},
): Promise<PrefixedStore> {
  const m = t.ctx.master.models;
  const hex = randomBytes(4).toString('hex');
  const status = opts.status ?? 'active';
  const store = await m.Store.create({ name: `Hygiene ${hex}`, slug: `hygiene-${hex}`, ownerId, status });
  await m.StoreMember.create({ storeId: store.id, userId: ownerId, role: 'owner' });
  const database = `${t.ctx.config.provisioning.databasePrefix}${store.id.replace(/-/g, '')}`;
  const u = new URL(TEST_SERVER_URL);
  const connection: TenantConnection = {
    host: u.hostname,
    port: Number(u.port || 5432),
    database,
    user: database,
    password: randomBytes(18).toString('base64url'),
  };
  let schemaVersion = 0;
  if (opts.withDatabase ?? status === 'active') {
    await ensureTenantDatabase(t.ctx.adminPools, TEST_SERVER_URL, {
      database,
      role: database,
      password: connection.password,
    });
    schemaVersion = (await migrateTenant(connection)).schemaVersion;
    await seedTenant(connection, { id: store.id, name: store.name, slug: store.slug });
  }
  await m.StoreDatabase.create({
    storeId: store.id,
    mode: 'managed',
    server: u.host,
    databaseName: database,
    credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(store.id)),
    status: status === 'active' ? 'ready' : 'provisioning',
    schemaVersion,
  });
  return { id: store.id, database, connection };
}

/** Drop what a test made by hand on the test server (not in the registry), at the suite's tear-down. */
export function dropAfterwards(t: Pick<Suite, 'defer'>, kind: 'DATABASE' | 'ROLE', name: string): void {
  if (!/test/.test(name)) throw new Error(`refusing to drop ${name}`);
  t.defer(`${kind} ${name}`, () =>
    adminQuery(`DROP ${kind} IF EXISTS "${name}"${kind === 'DATABASE' ? ' WITH (FORCE)' : ''}`),
  );
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * `tenantry …` in a child process, on this suite's master DB, Redis prefix and TENANT_DB_PREFIX, with `env`
 * on top (TENANT_SERVERS, say).
 */
export function tenantry(t: Suite, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const root = path.join(__dirname, '..', '..');
  const child = t.spawn(process.execPath, [path.join(root, 'bin', 'tenantry.js'), ...args], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: t.db.url,
      REDIS_PREFIX: t.ctx.redisPrefix,
      TENANT_DB_PREFIX: t.ctx.config.provisioning.databasePrefix,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}
