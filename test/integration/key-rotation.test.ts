import path from 'node:path';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { keyStatus, rotateKeys } from '../../src/hygiene/key-rotation';
import { Encryptor, secretContext } from '../../src/lib/crypto';
import { registerUser } from '../helpers/app';
import { insertStore } from '../helpers/fixtures';
import { provisionManagedStore } from '../helpers/stores';
import { useSuite, type Instance } from '../helpers/suite';

/**
 * `tenantry keys:rotate` / `keys:status` (the real command line in a child process): every stored ciphertext
 * moves to the newest key while stores keep serving, a re-run changes nothing, and the old key can then go.
 */
const OLD = `old:${Buffer.alloc(32, 7).toString('base64')}`;
const NEW = `new:${Buffer.alloc(32, 9).toString('base64')}`;
const t = useSuite('keyrot', { WORKER: 'on', ENCRYPTION_KEYS: OLD });
const root = path.join(__dirname, '..', '..');

/** Under the old key only, as a deployment had them before the new key was added. */
const stores: { id: string; host: string }[] = [];
let rotating: Instance;

function cli(args: string[], keys: string) {
  const child = t.spawn(process.execPath, [path.join(root, 'bin', 'tenantry.js'), ...args], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: t.db.url, REDIS_PREFIX: t.ctx.redisPrefix, ENCRYPTION_KEYS: keys },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise<{ code: number | null; out: string }>((resolve) =>
    child.once('close', (code) => resolve({ code, out })),
  );
}

const keysOf = async (column: string, table = 'store_databases') =>
  (
    await t.ctx.master.sequelize.query<{ k: string }>(
      `SELECT DISTINCT split_part(${column}, '.', 2) AS k FROM ${table} WHERE ${column} IS NOT NULL`,
      { type: QueryTypes.SELECT },
    )
  )
    .map((r) => r.k)
    .sort();

beforeAll(async () => {
  const owner = await registerUser(t.app);
  for (const i of [0, 1]) {
    // An owner each: the free plan allows one store.
    const store = await provisionManagedStore(t.app, (await registerUser(t.app)).token, { name: `Keys ${i}` });
    stores.push({ id: store.id, host: `${store.slug}.localhost` });
  }
  // More rows than one batch: external stores' credentials and Stripe secrets, all under the old key.
  for (let i = 0; i < 5; i++) {
    const store = await insertStore(t, owner.user.id, { status: 'provisioning' });
    const connection = { host: '127.0.0.1', port: 5432, database: `ext_${i}`, user: 'u', password: `p${i}` };
    await t.ctx.master.models.StoreDatabase.create({
      storeId: store.id,
      mode: 'external',
      server: null,
      databaseName: connection.database,
      credentials: t.ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(store.id)),
      status: 'pending',
    });
  }
  for (const s of stores) {
    await t.ctx.master.sequelize.query(
      `INSERT INTO store_integrations (store_id, provider, secrets) VALUES ($1, 'stripe', $2)`,
      {
        bind: [
          s.id,
          t.ctx.encryptor.encryptJson({ secretKey: `sk_test_${s.id}` }, secretContext.storeIntegration(s.id, 'stripe')),
        ],
      },
    );
  }
  // The deployment with the new key first: it encrypts under it and still reads the old one.
  rotating = await t.instance({ ENCRYPTION_KEYS: `${NEW},${OLD}` });
  t.defer('the instance with both keys', () => rotating.ctx.close());
}, 90_000);

test('keys:status lists what uses each key; keys:rotate without the old key fails those rows (exit 2) and changes nothing', async () => {
  const status = await cli(['keys:status'], `${NEW},${OLD}`);
  expect(status.code).toBe(0);
  expect(status.out).toMatch(/store_databases\.credentials\s+old\s+v2\s+7\s+to rotate/);
  expect(status.out).toMatch(/store_integrations\.secrets\s+old\s+v2\s+2\s+to rotate/);
  expect(status.out).toContain('Still to rotate: 9 under "old".');

  const blind = await cli(['keys:rotate'], NEW);
  expect(blind.code).toBe(2);
  expect(blind.out).toContain('Rotated 0 of 9 ciphertexts to key "new", 9 failed.');
  expect(blind.out).toContain('KEY NOT CONFIGURED');
  expect(await keysOf('credentials')).toEqual(['old']);
});

test('keys:rotate moves every ciphertext to the newest key while the stores serve requests without a failure', async () => {
  let stop = false;
  const failures: string[] = [];
  let served = 0;
  // Each store on the instance with both keys, its handle dropped after every request, so every request
  // reads and decrypts its credentials again while the command rewrites them.
  const load = stores.map(async (s) => {
    while (!stop) {
      const res = await request(rotating.app).get('/api/store/products').set('Host', s.host);
      if (res.status !== 200) failures.push(`${res.status} ${res.text}`);
      else served++;
      await rotating.ctx.tenants.invalidate(s.id);
    }
  });
  const run = await cli(['keys:rotate', '--batch', '2'], `${NEW},${OLD}`).finally(() => (stop = true));
  await Promise.all(load);

  expect(run.code).toBe(0);
  expect(run.out).toContain('Rotated 9 of 9 ciphertexts to key "new".');
  expect(run.out).toContain('Every ciphertext is under "new".');
  expect(run.out).toContain('Key "old" is used by no ciphertext: it can be removed from ENCRYPTION_KEYS.');
  expect(failures).toEqual([]);
  expect(served).toBeGreaterThan(0);
  expect(await keysOf('credentials')).toEqual(['new']);
  expect(await keysOf('secrets', 'store_integrations')).toEqual(['new']);

  const [audit] = await t.ctx.master.sequelize.query<{ data: { rotated: number; outdated: object } }>(
    `SELECT data FROM audit_log WHERE action = 'encryption_keys.rotated' AND (data->>'rotated')::int = 9`,
    { type: QueryTypes.SELECT },
  );
  expect(audit.data.outdated).toEqual({});
});

test('a second rotation is a no-op, and with the old key removed every store still serves and every secret decrypts', async () => {
  const deps = { master: rotating.ctx.master, encryptor: rotating.ctx.encryptor, keyIds: ['new', 'old'] };
  const before = await t.ctx.master.sequelize.query('SELECT store_id, credentials FROM store_databases ORDER BY 1', {
    type: QueryTypes.SELECT,
  });
  const again = await rotateKeys(deps, { actor: 'test' });
  expect(again).toMatchObject({ total: 0, rotated: 0, failed: [] });
  expect(
    await t.ctx.master.sequelize.query('SELECT store_id, credentials FROM store_databases ORDER BY 1', {
      type: QueryTypes.SELECT,
    }),
  ).toEqual(before);
  expect((await keyStatus(deps)).unusedKeyIds).toEqual(['old']);

  const newOnly = await t.instance({ ENCRYPTION_KEYS: NEW });
  t.defer('the instance with the new key only', () => newOnly.ctx.close());
  for (const s of stores) {
    await request(newOnly.app).get('/api/store/products').set('Host', s.host).expect(200);
    const [row] = await t.ctx.master.sequelize.query<{ secrets: string }>(
      `SELECT secrets FROM store_integrations WHERE store_id = $1`,
      { bind: [s.id], type: QueryTypes.SELECT },
    );
    expect(newOnly.ctx.encryptor.decryptJson(row.secrets, secretContext.storeIntegration(s.id, 'stripe'))).toEqual({
      secretKey: `sk_test_${s.id}`,
    });
  }
  const status = await cli(['keys:status'], NEW);
  expect(status.code).toBe(0);
  expect(status.out).toMatch(/store_databases\.credentials\s+new\s+v2\s+7\s+current/);
  expect(status.out).not.toContain('old');
});

test('a row the application rewrites while the rotation has read it is left as the application wrote it', async () => {
  const [s] = stores;
  const oldFirst = new Encryptor([
    { id: 'old', key: Buffer.alloc(32, 7) },
    { id: 'new', key: Buffer.alloc(32, 9) },
  ]);
  const context = secretContext.storeIntegration(s.id, 'stripe');
  await t.ctx.master.sequelize.query(`UPDATE store_integrations SET secrets = $1 WHERE store_id = $2`, {
    bind: [oldFirst.encryptJson({ secretKey: 'sk_test_before' }, context), s.id],
  });
  const written = rotating.ctx.encryptor.encryptJson({ secretKey: 'sk_test_written_meanwhile' }, context);
  const deps = { master: rotating.ctx.master, encryptor: rotating.ctx.encryptor, keyIds: ['new', 'old'] };
  // The application holds the row (as a configuration change would) while the rotation reaches it.
  const { rotation } = await t.ctx.master.sequelize.transaction(async (tx) => {
    await t.ctx.master.sequelize.query(`SELECT 1 FROM store_integrations WHERE store_id = $1 FOR UPDATE`, {
      bind: [s.id],
      transaction: tx,
    });
    const rotation = rotateKeys(deps, { actor: 'test' });
    await new Promise((r) => setTimeout(r, 300));
    await t.ctx.master.sequelize.query(`UPDATE store_integrations SET secrets = $1 WHERE store_id = $2`, {
      bind: [written, s.id],
      transaction: tx,
    });
    // Wrapped: the transaction must commit before the rotation can get the row.
    return { rotation };
  });
  const result = await rotation;
  const [row] = await t.ctx.master.sequelize.query<{ secrets: string }>(
    `SELECT secrets FROM store_integrations WHERE store_id = $1`,
    { bind: [s.id], type: QueryTypes.SELECT },
  );
  expect(row.secrets).toBe(written);
  expect(result.status.outdated).toEqual({});
  expect(result.failed).toEqual([]);
});

test('a backup archive under the old key keeps it: not removable, and the report says until when', async () => {
  const [s] = stores;
  const deps = { master: rotating.ctx.master, encryptor: rotating.ctx.encryptor, keyIds: ['new', 'old'] };
  expect((await keyStatus(deps)).unusedKeyIds).toEqual(['old']);
  // An archive is a file: rotation does not re-encrypt it, so its key is needed until it expires.
  await t.ctx.master.sequelize.query(
    `INSERT INTO store_backups (store_id, state, trigger, storage_key, key_id, completed_at, expires_at)
     VALUES ($1, 'completed', 'manual', 'k', 'old', now(), '2099-01-02T00:00:00Z'),
            ($1, 'completed', 'manual', 'k2', 'old', now(), '2099-01-01T00:00:00Z'),
            ($1, 'completed', 'manual', 'k3', 'old', now(), now() - interval '1 day')`,
    { bind: [s.id] },
  );
  const status = await keyStatus(deps);
  expect(status.unusedKeyIds).toEqual([]);
  expect(status.archives).toEqual([{ keyId: 'old', count: 2, until: new Date('2099-01-02T00:00:00Z') }]);
  const printed = await cli(['keys:status'], `${NEW},${OLD}`);
  expect(printed.code).toBe(0);
  expect(printed.out).toContain('2 backup archives use key "old" until 2099-01-02T00:00:00.000Z');
  expect(printed.out).not.toContain('it can be removed');
});
