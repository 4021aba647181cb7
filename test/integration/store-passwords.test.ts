import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { tenantServers } from '../../src/db/tenant-servers';
import type { TenantConnection } from '../../src/db/tenant-types';
import { rotateDuePasswords, rotateStorePasswords } from '../../src/hygiene/store-passwords';
import { secretContext } from '../../src/lib/crypto';
import { processMaintenance } from '../../src/maintenance';
import { registerUser } from '../helpers/app';
import { eventually, insertStore } from '../helpers/fixtures';
import { provisionManagedStore, storeConnection } from '../helpers/stores';
import { tenantry } from '../helpers/hygiene';
import { useSuite, type Instance } from '../helpers/suite';

/**
 * Store database passwords rotate (`tenantry tenants:rotate-passwords`, the scheduled task) on a Postgres that
 * checks passwords, while two API instances serve the stores: no request fails, the old password no longer
 * logs in, the new one does, sessions opened before keep working.
 */
let adminUrl = '';
const t = useSuite('storepw', async (s) => {
  const server = await s.passwordServer(`admin-${randomBytes(9).toString('hex')}`);
  adminUrl = `postgres://postgres:${server.password}@${server.host}:${server.port}/postgres`;
  // A wait for a pooled connection long enough for a busy test machine: a 503 busy would be the machine's, not
  // the rotation's.
  return { WORKER: 'on', TENANT_SERVERS: adminUrl, TENANT_ACQUIRE_TIMEOUT_MS: '10000' };
});
const stores: { id: string; host: string }[] = [];
let external = '';
let second: Instance;

/** The command's output, stdout then stderr. */
async function cli(args: string[], env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await tenantry(t, args, { TENANT_SERVERS: adminUrl, ...env });
  return { code, out: stdout + stderr };
}

/** Connect with these settings: undefined, or the SQLSTATE of the refusal. */
async function loginFails(c: TenantConnection): Promise<string | undefined> {
  const client = new pg.Client({ ...c, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? (err as Error).message;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Requests to every store on both instances, one after the other per store and instance, until stopped. */
function load() {
  let stop = false;
  const failures: string[] = [];
  const served = new Map<string, number>();
  const loops = [t.app, second.app].flatMap((app) =>
    stores.map(async (s) => {
      while (!stop) {
        const res = await request(app).get('/api/store/products').set('Host', s.host);
        if (res.status !== 200) failures.push(`${s.id}: ${res.status} ${res.text}`);
        else served.set(s.id, (served.get(s.id) ?? 0) + 1);
      }
    }),
  );
  return {
    async stop() {
      stop = true;
      await Promise.all(loops);
      return { failures, served };
    },
  };
}

beforeAll(async () => {
  for (const i of [0, 1, 2]) {
    // An owner each: the free plan allows one store.
    const store = await provisionManagedStore(t.app, (await registerUser(t.app)).token, { name: `Passwords ${i}` });
    stores.push({ id: store.id, host: `${store.slug}.localhost` });
  }
  const owner = await registerUser(t.app);
  const ext = await insertStore(t, owner.user.id, { status: 'provisioning' });
  external = ext.id;
  const connection = { host: '127.0.0.1', port: 5432, database: 'elsewhere', user: 'theirs', password: 'theirs' };
  await t.ctx.master.models.StoreDatabase.create({
    storeId: ext.id,
    mode: 'external',
    server: null,
    databaseName: connection.database,
    credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(ext.id)),
    status: 'ready',
  });
  second = await t.instance();
  t.defer('the second instance', () => second.ctx.close());
}, 120_000);

test('tenants:rotate-passwords under load on two instances: 0 failed requests, old password refused, new one accepted, open sessions unharmed; external stores skipped', async () => {
  const before = await Promise.all(stores.map((s) => storeConnection(t, s.id)));
  // A session opened with the old password, before the rotation.
  const open = new pg.Client({ ...before[0] });
  open.on('error', () => {});
  await open.connect();
  t.defer('the session opened before', () => open.end());

  const openPid = (await open.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  const running = load();
  // Some traffic first, so that every instance holds pooled connections made with the old password.
  await new Promise((r) => setTimeout(r, 500));
  const rotatedAt = new Date();
  const run = await cli(['tenants:rotate-passwords', '--stores', [...stores.map((s) => s.id), external].join(',')]);
  await new Promise((r) => setTimeout(r, 500));
  const { failures, served } = await running.stop();

  expect(run.out).toContain(`skipped: store ${external}: external database (not ours to change)`);
  expect(run.out).toContain('Passwords rotated: 3, skipped: 1, failed: 0 (of 4 stores).');
  expect(run.code).toBe(0);
  expect(failures).toEqual([]);
  for (const s of stores) expect(served.get(s.id)).toBeGreaterThan(0);

  const after = await Promise.all(stores.map((s) => storeConnection(t, s.id)));
  for (const [i, c] of after.entries()) {
    expect(c.password).not.toBe(before[i].password);
    expect({ ...c, password: '' }).toEqual({ ...before[i], password: '' });
    expect(await loginFails(before[i])).toBe('28P01');
    expect(await loginFails(c)).toBeUndefined();
  }
  // Postgres checks a password when a session starts: the one opened before goes on.
  expect((await open.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
  // The instances' connections made with the old password drained (their handles closed once idle): what
  // serves the stores now logged in with the new one.
  const admin = await t.pgClient({ connectionString: adminUrl });
  await eventually(async () => {
    const { rows } = await admin.query(
      `SELECT usename, backend_start FROM pg_stat_activity WHERE usename = ANY($1) AND backend_start < $2 AND pid <> $3`,
      [before.map((c) => c.user), rotatedAt, openPid],
    );
    expect(rows).toEqual([]);
  }, 10_000);
  for (const app of [t.app, second.app])
    for (const s of stores) await request(app).get('/api/store/products').set('Host', s.host).expect(200);

  const rows = await t.ctx.master.sequelize.query<{ rotated: boolean; pending: string | null }>(
    `SELECT credentials_rotated_at IS NOT NULL AS rotated, pending_credentials AS pending FROM store_databases
      WHERE store_id = ANY($1::uuid[])`,
    { bind: [stores.map((s) => s.id)], type: QueryTypes.SELECT },
  );
  expect(rows).toEqual(stores.map(() => ({ rotated: true, pending: null })));
  const audited = await t.ctx.master.sequelize.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM audit_log WHERE action = 'store.database.password_rotated'`,
    { type: QueryTypes.SELECT },
  );
  expect(audited[0].n).toBe(3);
});

test('a rotation that stopped after changing the password on the server is finished by the scheduled task with that password', async () => {
  const [s] = stores;
  const current = await storeConnection(t, s.id);
  const staged = { ...current, password: `staged-${randomBytes(6).toString('hex')}` };
  // As a crash leaves it: the new password pending in the master and already set on the server.
  await t.ctx.master.sequelize.query('UPDATE store_databases SET pending_credentials = $1 WHERE store_id = $2', {
    bind: [t.ctx.encryptor.encryptJson(staged, secretContext.storeCredentials(s.id)), s.id],
  });
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`ALTER ROLE "${current.user}" PASSWORD '${staged.password}'`).finally(() => admin.end());

  expect(await processMaintenance(t.ctx, { task: 'rotate-store-passwords' })).toEqual({
    rotated: 1,
    skipped: 0,
    failed: 0,
  });
  expect((await storeConnection(t, s.id)).password).toBe(staged.password);
  for (const app of [t.app, second.app]) await request(app).get('/api/store/products').set('Host', s.host).expect(200);
});

test('the schedule rotates the stores whose password is older than the configured days, at most the number per run', async () => {
  const [, old, older] = stores;
  await t.ctx.master.sequelize.query(
    `UPDATE store_databases SET credentials_rotated_at = now() - make_interval(days => CASE store_id WHEN $1 THEN 40 ELSE 50 END)
      WHERE store_id IN ($1, $2)`,
    { bind: [old.id, older.id] },
  );
  const before = await storeConnection(t, old.id);
  const deps = {
    master: t.ctx.master,
    encryptor: t.ctx.encryptor,
    adminPools: t.ctx.adminPools,
    servers: tenantServers(t.ctx),
    invalidate: (storeId: string) => t.ctx.tenants.invalidate(storeId),
  };
  expect(await rotateDuePasswords(deps, { days: 30, perRun: 1 })).toEqual({ rotated: 1, skipped: 0, failed: 0 });
  // The oldest went first; the other waits for the next run.
  expect((await storeConnection(t, old.id)).password).toBe(before.password);
  expect(await rotateDuePasswords(deps, { days: 30, perRun: 5 })).toEqual({ rotated: 1, skipped: 0, failed: 0 });
  expect((await storeConnection(t, old.id)).password).not.toBe(before.password);
  expect(await rotateDuePasswords(deps, { days: 30, perRun: 5 })).toEqual({ rotated: 0, skipped: 0, failed: 0 });
  expect(await rotateDuePasswords(deps, { days: 0, perRun: 5 })).toEqual({ rotated: 0, skipped: 0, failed: 0 });
});

test('tenants:rotate-passwords names the stores it could not rotate and exits 2, changing nothing for them', async () => {
  const [s] = stores;
  const before = await storeConnection(t, s.id);
  // A command run with a configuration that does not list the store's server.
  const run = await cli(['tenants:rotate-passwords', '--stores', s.id], {
    TENANT_SERVERS: 'postgres://postgres@127.0.0.1:5432/postgres',
  });
  expect(run.out).toContain(
    `failed: store ${s.id}: tenant server ${before.host}:${before.port} is not in TENANT_SERVERS`,
  );
  expect(run.out).toContain('Passwords rotated: 0, skipped: 0, failed: 1 (of 1 stores).');
  expect(run.code).toBe(2);
  expect(await storeConnection(t, s.id)).toEqual(before);
  const [row] = await t.ctx.master.sequelize.query<{ pending: string | null }>(
    'SELECT pending_credentials AS pending FROM store_databases WHERE store_id = $1',
    { bind: [s.id], type: QueryTypes.SELECT },
  );
  expect(row.pending).toBeNull();
  expect(await loginFails(before)).toBeUndefined();
});

test('a password the server refuses to set leaves the master as it was, the password still pending', async () => {
  const [, s] = stores;
  const current = await storeConnection(t, s.id);
  // Settings the server cannot apply (no such role): ALTER ROLE fails.
  const staged = { ...current, user: 'no_such_role', password: 'never-set' };
  const pending = t.ctx.encryptor.encryptJson(staged, secretContext.storeCredentials(s.id));
  await t.ctx.master.sequelize.query('UPDATE store_databases SET pending_credentials = $1 WHERE store_id = $2', {
    bind: [pending, s.id],
  });
  const [result] = await rotateStorePasswords(
    {
      master: t.ctx.master,
      encryptor: t.ctx.encryptor,
      adminPools: t.ctx.adminPools,
      servers: tenantServers(t.ctx),
      invalidate: (storeId) => t.ctx.tenants.invalidate(storeId),
    },
    [s.id],
    { actor: 'test' },
  );
  expect(result).toMatchObject({ storeId: s.id, outcome: 'failed', reason: expect.stringContaining('no_such_role') });
  expect(await storeConnection(t, s.id)).toEqual(current);
  const [row] = await t.ctx.master.sequelize.query<{ pending: string }>(
    'SELECT pending_credentials AS pending FROM store_databases WHERE store_id = $1',
    { bind: [s.id], type: QueryTypes.SELECT },
  );
  expect(row.pending).toBe(pending);
  await t.ctx.tenants.invalidate(s.id);
  for (const app of [t.app, second.app]) await request(app).get('/api/store/products').set('Host', s.host).expect(200);
  await t.ctx.master.sequelize.query('UPDATE store_databases SET pending_credentials = NULL WHERE store_id = $1', {
    bind: [s.id],
  });
});

test('a password changed on the server before this instance hears of it: the request reads the credentials again and is served, the store is not fenced; credentials that stay wrong still fence', async () => {
  const [, , s] = stores;
  const setPassword = async (user: string, password: string) => {
    const admin = await t.pgClient({ connectionString: adminUrl });
    await admin.query(`ALTER ROLE "${user}" PASSWORD '${password}'`);
  };
  await request(t.app).get('/api/store/products').set('Host', s.host).expect(200);
  const current = await storeConnection(t, s.id);
  const changed = { ...current, password: `unannounced-${randomBytes(6).toString('hex')}` };
  // The rotation's window: the server and the master have the new password, the bus has not told this instance.
  await setPassword(current.user, changed.password);
  await t.ctx.master.sequelize.query('UPDATE store_databases SET credentials = $1 WHERE store_id = $2', {
    bind: [t.ctx.encryptor.encryptJson(changed, secretContext.storeCredentials(s.id)), s.id],
  });
  // The cached handle still holds the old password; without its pooled sessions the next request logs in anew.
  const stale = t.ctx.tenants.cachedHandle(s.id)!;
  expect(stale).toBeDefined();
  stale.closeIdle(Number.MAX_SAFE_INTEGER);
  expect(stale.idleConnections()).toBe(0);

  const res = await request(t.app).get('/api/store/products').set('Host', s.host);
  expect(res.status).toBe(200);
  expect(t.ctx.tenants.stats().fenced).toEqual([]);
  expect(t.ctx.tenants.cachedHandle(s.id)).not.toBe(stale);

  // Refused with the master's credentials too: fenced, as before.
  const fresh = t.ctx.tenants.cachedHandle(s.id)!;
  await setPassword(current.user, `elsewhere-${randomBytes(6).toString('hex')}`);
  fresh.closeIdle(Number.MAX_SAFE_INTEGER);
  const refused = await request(t.app).get('/api/store/products').set('Host', s.host);
  expect(refused.status).toBe(503);
  expect(refused.body.code).toBe('TENANT_UNAVAILABLE');
  expect(t.ctx.tenants.stats().fenced.map((f) => f.storeId)).toEqual([s.id]);

  await setPassword(current.user, changed.password);
  await t.ctx.tenants.invalidate(s.id);
  for (const app of [t.app, second.app])
    await eventually(() => request(app).get('/api/store/products').set('Host', s.host).expect(200), 5000);
});
