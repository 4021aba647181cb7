import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { createTestDatabase, type TestDatabase } from '../helpers/db';
import { useResources } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';

/**
 * What a supervisor (systemd, Docker, a process manager) sees: it signals the process it started, and
 * the HTTP server, the queue worker and the embedded Postgres all stop, each step logged, exit code 0.
 */
const ROOT = path.resolve(__dirname, '../..');
const STOP_WITHIN_MS = 15_000;

interface Started {
  child: ChildProcess;
  port: number;
  redisPrefix: string;
  /** The JSON log lines so far. */
  logs(): { msg: string; [key: string]: unknown }[];
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const opened = useResources();
let root: string;
const started = new Set<Started>();
const clusterHomes: string[] = [];
const databases: TestDatabase[] = [];
/** Processes a failed test may leave behind (npm's child when the signal does not reach it). */
const strays = new Set<number>();

beforeAll(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'tenantry-shutdown-'));
  chmodSync(root, 0o755);
  // Closed in reverse: the processes first, the folders last.
  opened.defer('the temporary folders', () => {
    for (const home of clusterHomes) rmSync(home, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });
  opened.defer('the test databases', async () => {
    for (const db of databases) await db.drop();
  });
  opened.defer('the Postgres servers left running', () => {
    for (const dir of [root, ...clusterHomes]) for (const pid of postgresOf(dir)) process.kill(pid, 'SIGINT');
  });
  opened.defer("the servers' Redis keys", async () => {
    const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { lazyConnect: true });
    try {
      await redis.connect();
      for (const s of started) {
        const keys = await redis.keys(`${s.redisPrefix}:*`);
        if (keys.length) await redis.del(...keys);
      }
    } finally {
      redis.disconnect();
    }
  });
  opened.defer('the server processes', async () => {
    for (const pid of strays) if (existsProcess(pid)) process.kill(pid, 'SIGKILL');
    for (const s of started) {
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
      await s.exited;
      // A surviving grandchild would hold these pipes open, and jest with them.
      s.child.stdout!.destroy();
      s.child.stderr!.destroy();
    }
  });
});

/** The server as a supervisor starts it: `command` in the project folder, its own configuration in the environment. */
async function startServer(command: string[], env: Record<string, string>): Promise<Started> {
  const port = await freePort();
  const redisPrefix = `test:${randomBytes(4).toString('hex')}`;
  const child = spawn(command[0], command.slice(1), {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      // test: no .env is read; every key the server needs is here.
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      PORT: String(port),
      REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
      REDIS_PREFIX: redisPrefix,
      WORKER: 'on',
      TENANT_TEMPLATES: 'off',
      TENANT_WARM_POOL: '0',
      JWT_SECRET: process.env.JWT_SECRET ?? '',
      ENCRYPTION_KEYS: process.env.ENCRYPTION_KEYS ?? '',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const s: Started = {
    child,
    port,
    redisPrefix,
    output: () => out,
    logs: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string }),
    exited,
  };
  started.add(s);
  return s;
}

async function until<T>(
  what: string,
  s: Started,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (s.child.exitCode !== null || Date.now() > deadline)
      throw new Error(`${what}: not seen (exit code ${s.child.exitCode}):\n${s.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const ready = (port: number) =>
  fetch(`http://127.0.0.1:${port}/ready`)
    .then((r) => (r.status === 200 ? true : undefined))
    .catch(() => undefined);

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** PIDs of the Postgres processes whose command line names a data directory under `dir`. */
function postgresOf(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmdline[0].endsWith('/postgres') && cmdline.some((arg) => arg.startsWith(dir))) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

async function stopWithin(
  s: Started,
  signalled: ChildProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<{ code: number | null; ms: number }> {
  const t0 = Date.now();
  signalled.kill(signal);
  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), STOP_WITHIN_MS).unref());
  const result = await Promise.race([s.exited, timeout]);
  if (result === 'timeout') throw new Error(`still running ${STOP_WITHIN_MS} ms after ${signal}:\n${s.output()}`);
  return { code: result.code, ms: Date.now() - t0 };
}

const messages = (s: Started) => s.logs().map((l) => l.msg);

test('SIGTERM to the server process, with the embedded Postgres: HTTP server, worker and Postgres stop, each step logged, exit code 0', async () => {
  // The first run as it is on a fresh machine: DATA_DIR in a folder only its owner can enter.
  const closed = mkdtempSync(path.join(root, 'closed-'));
  const dataDir = path.join(closed, '.data');
  const s = await startServer([process.execPath, '--import', 'tsx', 'src/server.ts'], {
    DATA_DIR: dataDir,
    EMBEDDED_PG_PORT: String(await freePort()),
  });
  await until('/ready', s, () => ready(s.port));
  const running = s.logs().find((l) => l.msg === 'embedded Postgres running') as
    { postgresPid: number; dataDirectory: string } | undefined;
  if (!running) throw new Error(`no "embedded Postgres running" line:\n${s.output()}`);
  if (running.dataDirectory.startsWith('/var/lib/tenantry/clusters/'))
    clusterHomes.push(path.dirname(readlinkSync(path.join(dataDir, 'pg'))));
  expect(postgresOf(running.dataDirectory)).toContain(running.postgresPid);

  const { code, ms } = await stopWithin(s, s.child);
  expect({ code, output: code === 0 ? '' : s.output() }).toEqual({ code: 0, output: '' });
  expect(ms).toBeLessThan(STOP_WITHIN_MS);
  expect(await portOpen(s.port)).toBe(false);
  expect(postgresOf(running.dataDirectory)).toEqual([]);
  const log = messages(s);
  const steps = [
    'shutting down: no new connections, finishing requests and jobs in flight',
    'HTTP server closed',
    'queue workers stopped',
    'embedded Postgres stopped',
    'stopped cleanly',
  ];
  expect(steps.map((m) => log.indexOf(m))).toEqual([...steps.map((m) => log.indexOf(m))].sort((a, b) => a - b));
  expect(steps.filter((m) => !log.includes(m))).toEqual([]);
});

test('SIGTERM to `npm start` (what a supervisor started) reaches the server: npm and node exit 0, the port closes', async () => {
  const db = await createTestDatabase('shutdown');
  databases.push(db);
  const s = await startServer(['npm', 'start', '--silent'], {
    DATABASE_URL: db.url,
    DATA_DIR: path.join(root, 'npm-data'),
  });
  await until('/ready', s, () => ready(s.port));
  // npm's child: the node process that serves.
  const node = Number(readFileSync(`/proc/${s.child.pid}/task/${s.child.pid}/children`, 'utf8').trim().split(' ')[0]);
  expect(readFileSync(`/proc/${node}/cmdline`, 'utf8')).toContain('src/server.ts');
  strays.add(node);

  const { code } = await stopWithin(s, s.child);
  expect({ code, output: code === 0 ? '' : s.output() }).toEqual({ code: 0, output: '' });
  // npm waits for its child: the server is gone when npm is.
  expect(existsProcess(node)).toBe(false);
  expect(await portOpen(s.port)).toBe(false);
  expect(messages(s)).toContain('stopped cleanly');
});

test('SIGTERM while the server is still starting: what has started (the embedded Postgres) stops too, exit code 0', async () => {
  // A new data directory: the signal arrives while initdb runs, long before the server could listen.
  const dataDir = path.join(root, 'early');
  const s = await startServer([process.execPath, '--import', 'tsx', 'src/server.ts'], {
    DATA_DIR: dataDir,
    EMBEDDED_PG_PORT: String(await freePort()),
  });
  await until('the embedded Postgres starting', s, () =>
    messages(s).some((m) => m.startsWith('DATABASE_URL is not set')) ? true : undefined,
  );

  const { code } = await stopWithin(s, s.child);
  expect({ code, output: code === 0 ? '' : s.output() }).toEqual({ code: 0, output: '' });
  expect(await portOpen(s.port)).toBe(false);
  expect(postgresOf(root)).toEqual([]);
  const log = messages(s);
  expect(log.some((m) => m.startsWith('Tenantry is listening'))).toBe(false);
  expect(log.indexOf('embedded Postgres running')).toBeGreaterThan(
    log.indexOf('shutting down: no new connections, finishing requests and jobs in flight'),
  );
  expect(log.slice(-2)).toEqual(['embedded Postgres stopped', 'stopped cleanly']);
});

function existsProcess(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
