import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { latestSchemaVersion } from '../../src/db/migrate';
import { withClient } from '../../src/db/pg-client';
import { ident } from '../../src/db/tenant-server-admin';
import type { TenantConnection } from '../../src/db/tenant-types';
import { secretContext } from '../../src/lib/crypto';
import { migrateTenant } from '../../src/provisioning/tenant-db';
import type { TestApp } from './app';
import { startPasswordServer, type PasswordServer } from './password-server';
import { DATABASE_BYTES, scratchRoot } from './scratch';
import { registerAdmin } from './admins';
import { useSuite, type Suite, type SuiteResources } from './suite';
import { freePort } from './tcp-proxy';
import { zipfSampler } from './zipf';

/**
 * A fleet as operators run one, seen from outside: API instances and a queue worker as child processes
 * (`src/server.ts`, `src/worker.ts`) sharing one master database and one Redis, their store databases on a
 * small Postgres of its own, and a load generator spreading Zipf-distributed requests over the instances.
 */

const ROOT = path.resolve(__dirname, '../..');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `probe` until it returns something other than undefined, failing after `timeoutMs` with `what`. */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Redis of the suite's own (the shared one on 6379 is not ours to stop)

export interface OwnRedis {
  port: number;
  url: string;
  /** SIGKILL: gone at once, as a crashed or unplugged Redis is. */
  kill(): Promise<void>;
  /** Start it again on the same port (empty: nothing is saved). */
  start(): Promise<void>;
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setTimeout(1000);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (d) => {
      socket.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** `redis-server` on a free port, in a child process stopped at tear-down. */
export async function startOwnRedis(s: SuiteResources): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const start = async () => {
    child = s.spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      {
        stdio: 'ignore',
      },
    );
    const c = child;
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    await until(`redis-server on port ${port}`, async () => ((await ping(port)) ? true : undefined), 10_000, 50);
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async kill() {
      child?.kill('SIGKILL');
      await exited;
    },
    start,
  };
}

// ---------------------------------------------------------------------------------------------------------
// The small Postgres and its store databases

export interface FleetServer extends PasswordServer {
  adminUrl: string;
  /** `host:port`, as the budgets and /api/admin/pools name it. */
  key: string;
  maxConnections: number;
  /** The stores' login role (one for all: their databases are copies of one template). */
  role: { user: string; password: string };
  connection(database: string): TenantConnection;
}

/**
 * A throw-away Postgres with `max_connections`, fast to fill with `databases` databases (no fsync: nothing
 * here must survive).
 */
export async function startFleetServer(
  s: SuiteResources,
  maxConnections: number,
  databases: number,
): Promise<FleetServer> {
  const password = randomBytes(9).toString('hex');
  const server = await s.open(
    `a Postgres with max_connections ${maxConnections}`,
    () =>
      startPasswordServer(
        password,
        60_000,
        {
          max_connections: maxConnections,
          fsync: 'off',
          synchronous_commit: 'off',
          full_page_writes: 'off',
        },
        { TMPDIR: scratchRoot((databases + 10) * DATABASE_BYTES) },
      ),
    (p) => p.stop(),
  );
  const role = { user: 'fleet_store', password: randomBytes(9).toString('hex') };
  return {
    ...server,
    adminUrl: `postgres://postgres:${password}@${server.host}:${server.port}/postgres`,
    key: `${server.host}:${server.port}`,
    maxConnections,
    role,
    connection: (database) => ({ host: server.host, port: server.port, database, ...role }),
  };
}

/**
 * `n` store databases on the server: one migrated template with a few products, copied n times
 * (CREATE DATABASE … TEMPLATE, a file copy: a few ms each). Returns their names.
 */
export async function makeStoreDatabases(server: FleetServer, n: number): Promise<string[]> {
  const template = 'fleet_tpl';
  await withClient(server.adminUrl, async (c) => {
    await c.query(`CREATE ROLE ${ident(server.role.user)} LOGIN PASSWORD '${server.role.password}'`);
    await c.query(`CREATE DATABASE ${template} OWNER ${ident(server.role.user)}`);
  });
  await migrateTenant(server.connection(template));
  await withClient({ ...server.connection(template) }, async (c) => {
    await c.query(`INSERT INTO products (sku, name, description, price_cents)
      SELECT 'SKU-' || g, 'Product ' || g, 'A fine product number ' || g, 100 * g FROM generate_series(1, 25) g`);
  });
  const names = Array.from({ length: n }, (_, i) => `fleet_test_${String(i).padStart(4, '0')}`);
  await withClient(server.adminUrl, async (c) => {
    for (const name of names) {
      // The template's last session may still be on its way out.
      await until(
        `a copy of ${template}`,
        () =>
          c
            .query(`CREATE DATABASE ${name} TEMPLATE ${template} OWNER ${ident(server.role.user)} STRATEGY FILE_COPY`)
            .then(() => true),
        10_000,
        50,
      );
    }
  });
  return names;
}

/**
 * Active stores on these databases, written straight into the master DB (as provisioning leaves them),
 * owned by `owners` platform users in turn. Returns the store ids, in the order of `databases`.
 */
export async function registerFleetStores(
  t: TestApp,
  server: FleetServer,
  databases: string[],
  owners: number,
): Promise<string[]> {
  return withClient(t.db.url, async (c) => {
    const ownerIds: string[] = [];
    for (let i = 0; i < owners; i++) {
      const { rows } = await c.query<{ id: string }>(
        `INSERT INTO users (email, password_hash, name) VALUES ($1, 'x', 'Fleet owner') RETURNING id`,
        [`fleet-owner-${i}-${randomBytes(4).toString('hex')}@example.test`],
      );
      ownerIds.push(rows[0].id);
    }
    const { rows } = await c.query<{ id: string }>(
      `INSERT INTO stores (name, slug, status, owner_id)
         SELECT 'Fleet ' || n, 'fleet-' || n || '-' || $2::text, 'active', ($1::uuid[])[1 + (n - 1) % cardinality($1::uuid[])]
           FROM generate_series(1, $3::int) AS n ORDER BY n RETURNING id`,
      [ownerIds, randomBytes(3).toString('hex'), databases.length],
    );
    const ids = rows.map((r) => r.id);
    const credentials = ids.map((id, i) =>
      t.ctx.encryptor.encryptJson(server.connection(databases[i]), secretContext.storeCredentials(id)),
    );
    await c.query(
      `INSERT INTO store_databases (store_id, mode, server, database_name, credentials, status, schema_version)
         SELECT id, 'managed', $3, db, cred, 'ready', $5 FROM unnest($1::uuid[], $2::text[], $4::text[]) AS s(id, cred, db)`,
      [ids, credentials, server.key, databases, latestSchemaVersion('tenant')],
    );
    return ids;
  });
}

// ---------------------------------------------------------------------------------------------------------
// The processes

export interface FleetProcess {
  name: string;
  child: ChildProcess;
  /** HTTP port (API instances only). */
  port: number;
  /** Everything it wrote so far. */
  output(): string;
  exited: Promise<void>;
  alive(): boolean;
}

/** An API instance (`src/server.ts`) or the queue worker (`src/worker.ts`) as a child process of the suite. */
export async function spawnFleetProcess(
  s: SuiteResources,
  name: string,
  kind: 'api' | 'worker',
  env: Record<string, string>,
): Promise<FleetProcess> {
  const port = kind === 'api' ? await freePort() : 0;
  const child = s.spawn(process.execPath, ['--import', 'tsx', kind === 'api' ? 'src/server.ts' : 'src/worker.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'test',
      LOG_LEVEL: 'warn',
      JWT_SECRET: process.env.JWT_SECRET ?? '',
      ENCRYPTION_KEYS: process.env.ENCRYPTION_KEYS ?? '',
      TENANT_DB_PREFIX: process.env.TENANT_DB_PREFIX ?? '',
      TENANT_WARM_POOL: '0',
      TENANT_TEMPLATES: 'off',
      WORKER: kind === 'worker' ? 'on' : 'off',
      PORT: String(port),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const p: FleetProcess = {
    name,
    child,
    port,
    output: () => out,
    exited,
    alive: () => child.exitCode === null && child.signalCode === null,
  };
  return p;
}

/** Resolves once the instance answers /ready (or fails with its output when it exits or takes too long). */
export async function ready(p: FleetProcess, timeoutMs = 60_000): Promise<void> {
  await until(
    `${p.name} ready`,
    async () => {
      if (!p.alive()) throw new Error(`${p.name} exited:\n${p.output()}`);
      const res = await fetch(`http://127.0.0.1:${p.port}/ready`, { signal: AbortSignal.timeout(2000) });
      return res.status === 200 ? true : undefined;
    },
    timeoutMs,
    200,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${p.output().slice(-3000)}`);
  });
}

/** Lines of a process's log that say a server refused a session (53300: too many clients / reserved slots). */
export function refusalLines(output: string): string[] {
  return output.split('\n').filter((l) => /53300|too many clients|remaining connection slots/i.test(l));
}

// ---------------------------------------------------------------------------------------------------------
// What the instances tell

export interface ServerPool {
  key: string;
  budget: number;
  mode: 'leased' | 'static' | 'local';
  leased: number;
  allowance: number;
  leasedTotal: number;
  instances: number;
  max: number;
  open: number;
  peak: number;
  waiting: number;
  serverRefusals: number;
  busyRefusals: number;
}

export interface PoolStats {
  instanceId: string;
  servers: ServerPool[];
  fenced: { storeId: string; reason: string }[];
  fencesTotal: number;
}

/** GET /api/admin/pools of one instance. */
export async function poolsOf(p: FleetProcess, token: string): Promise<PoolStats> {
  const res = await fetch(`http://127.0.0.1:${p.port}/api/admin/pools`, {
    headers: { Authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status !== 200) throw new Error(`${p.name}: /api/admin/pools answered ${res.status} ${await res.text()}`);
  return (await res.json()) as PoolStats;
}

/**
 * One series of an instance's GET /metrics (`name` with exactly these labels), undefined when it is not
 * there.
 */
export async function metricOf(
  p: FleetProcess,
  token: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const res = await fetch(`http://127.0.0.1:${p.port}/metrics`, {
    headers: { Authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status !== 200) throw new Error(`${p.name}: /metrics answered ${res.status}`);
  const wanted = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  const series = wanted ? `${name}{${wanted}}` : name;
  const line = (await res.text()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** The entry of one server in an instance's pools (undefined until the instance has used it). */
export const serverIn = (stats: PoolStats, key: string): ServerPool | undefined =>
  stats.servers.find((s) => s.key === key);

// ---------------------------------------------------------------------------------------------------------
// The server as Postgres sees it

export interface ConnectionSamples {
  /** Highest number of client sessions seen at once (every role, Tenantry's or not). */
  peakTotal: number;
  /** Highest number of Tenantry tenant connections seen at once. */
  peakTenant: number;
  samples: number;
  /** The peaks since the previous call (or the start); the next ones start now. */
  phase(): { peakTotal: number; peakTenant: number };
  stop(): Promise<void>;
}

/** Samples pg_stat_activity on the server every ~25 ms (as a superuser: one of the reserved slots). */
export async function sampleServer(s: SuiteResources, server: FleetServer): Promise<ConnectionSamples> {
  const client = await s.pgClient({ connectionString: server.adminUrl });
  let running = true;
  let phase = { peakTotal: 0, peakTenant: 0 };
  const result: ConnectionSamples = {
    peakTotal: 0,
    peakTenant: 0,
    samples: 0,
    phase() {
      const ended = phase;
      phase = { peakTotal: 0, peakTenant: 0 };
      return ended;
    },
    stop: async () => {
      running = false;
      await done;
    },
  };
  const done = (async () => {
    while (running) {
      const { rows } = await client.query<{ total: number; tenant: number }>(
        `SELECT count(*)::int AS total, count(*) FILTER (WHERE application_name = 'tenantry-tenant')::int AS tenant
           FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`,
      );
      const { total, tenant } = rows[0];
      result.peakTotal = Math.max(result.peakTotal, total);
      result.peakTenant = Math.max(result.peakTenant, tenant);
      phase = { peakTotal: Math.max(phase.peakTotal, total), peakTenant: Math.max(phase.peakTenant, tenant) };
      result.samples++;
      await sleep(25);
    }
  })().catch(() => {});
  s.defer('the connection sampler', () => result.stop());
  return result;
}

// ---------------------------------------------------------------------------------------------------------
// Load

export interface LoadCounts {
  ok: number;
  /** 503 TENANT_UNAVAILABLE "busy" with a Retry-After of at least a second. */
  busy: number;
  /** Anything else (status, code and detail), the first few kept. */
  other: number;
  otherSamples: string[];
  /** Requests to an instance that was gone (refused or cut connections). */
  unreachable: number;
  /** 200s per instance. */
  okBy: Map<string, number>;
}

const emptyCounts = (): LoadCounts => ({ ok: 0, busy: 0, other: 0, otherSamples: [], unreachable: 0, okBy: new Map() });

/**
 * `concurrency` loops, each sending GET /api/store/products for a Zipf-chosen store (X-Store-Id) to the next
 * live instance in turn, until stopped. Every request is bounded (10 s). Counts are kept per phase: `phase()`
 * returns the counts since the last call and starts new ones.
 */
export function startLoad(
  s: SuiteResources,
  opts: { instances: () => FleetProcess[]; stores: string[]; concurrency: number },
) {
  const pick = zipfSampler(opts.stores.length, 1.1);
  let counts = emptyCounts();
  const total = emptyCounts();
  let running = true;
  let turn = 0;
  const one = async () => {
    const live = opts.instances().filter((p) => p.alive());
    if (!live.length) return sleep(50);
    const p = live[turn++ % live.length];
    const store = opts.stores[pick()];
    const record = (f: (c: LoadCounts) => void) => {
      f(counts);
      f(total);
    };
    let res: Response;
    let body: { code?: string; detail?: string } = {};
    try {
      res = await fetch(`http://127.0.0.1:${p.port}/api/store/products?limit=5`, {
        headers: { 'X-Store-Id': store },
        signal: AbortSignal.timeout(10_000),
      });
      const text = await res.text();
      if (res.status !== 200) body = JSON.parse(text || '{}') as typeof body;
    } catch (err) {
      // A killed instance cuts its connections before its exit is seen here: give the exit a moment.
      await Promise.race([p.exited, sleep(1000)]);
      if (!p.alive() || !running) return record((c) => c.unreachable++);
      return record((c) => {
        c.other++;
        if (c.otherSamples.length < 5) c.otherSamples.push(`${p.name}: ${(err as Error).message}`);
      });
    }
    if (res.status === 200) return record((c) => c.okBy.set(p.name, (c.okBy.get(p.name) ?? 0) + 1) && c.ok++);
    const retryAfter = Number(res.headers.get('retry-after'));
    if (res.status === 503 && body.code === 'TENANT_UNAVAILABLE' && /busy/i.test(body.detail ?? '') && retryAfter >= 1)
      return record((c) => c.busy++);
    record((c) => {
      c.other++;
      if (c.otherSamples.length < 5)
        c.otherSamples.push(
          `${p.name}: ${res.status} Retry-After ${res.headers.get('retry-after')} ${JSON.stringify(body)}`,
        );
    });
  };
  const loops = Array.from({ length: opts.concurrency }, async () => {
    while (running) await one();
  });
  const done = Promise.all(loops);
  const stop = async () => {
    running = false;
    await done;
  };
  s.defer('the load', stop);
  return {
    /** The counts since the previous call (or the start); the next ones start now. */
    phase(): LoadCounts {
      const c = counts;
      counts = emptyCounts();
      return c;
    },
    total,
    stop,
  };
}

/** Open sessions as an ordinary role (not Tenantry's) until the server refuses one; returns them. */
export async function fillServer(server: FleetServer): Promise<pg.Client[]> {
  const squatters: pg.Client[] = [];
  for (;;) {
    const client = new pg.Client({
      ...server.connection('postgres'),
      application_name: 'squatter',
      connectionTimeoutMillis: 5000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (err) {
      if ((err as { code?: string }).code !== '53300') {
        await Promise.all(squatters.map((c) => c.end().catch(() => {})));
        throw err;
      }
      return squatters;
    }
    squatters.push(client);
  }
}

// ---------------------------------------------------------------------------------------------------------
// A whole fleet for one suite

export interface Fleet {
  t: Suite;
  redis: OwnRedis;
  server: FleetServer;
  /** The API instances, in start order. */
  instances: FleetProcess[];
  worker: FleetProcess;
  /** Store ids; their databases are on `server`. */
  stores: string[];
  /** The stores' database names, in the order of `stores`. */
  databases: string[];
  /** A platform admin's token (for /api/admin/*). */
  token: string;
  /** Sessions ordinary roles may open on `server` before it refuses (the rest is reserved for superusers). */
  ordinarySlots: number;
  /** Every process's output, for failure messages. */
  outputs(): string;
  /**
   * The leases on `server` as Redis holds them (process id → connections): the hash every process's lease script
   * reads and writes (src/db/server-leases.ts), asked directly.
   */
  leasesInRedis(): Promise<Map<string, number>>;
}

/**
 * `instances` API instances and a worker on one master DB, a Redis of the suite's own and a Postgres with
 * `maxConnections` holding `stores` store databases, owned by `owners` platform users in turn. Everything is
 * started in beforeAll and stopped in afterAll (the processes first).
 */
export function useFleet(
  label: string,
  opts: { stores: number; owners: number; instances: number; maxConnections: number; env?: Record<string, string> },
): Fleet {
  const fleet = { instances: [] as FleetProcess[], stores: [] as string[], token: '' } as Fleet;
  fleet.t = useSuite(label, async (s) => {
    [fleet.redis, fleet.server] = await Promise.all([
      startOwnRedis(s),
      startFleetServer(s, opts.maxConnections, opts.stores),
    ]);
    // The suite's own app only sets up (the admin account): it stays on the usual Redis, away from the outages.
    return {};
  });
  fleet.outputs = () =>
    [...fleet.instances, fleet.worker]
      .filter(Boolean)
      .map((p) => `--- ${p.name}:\n${p.output().slice(-4000)}`)
      .join('\n');
  let redis: Redis | undefined;
  fleet.leasesInRedis = async () => {
    if (!redis) {
      const client = new Redis(fleet.redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      client.on('error', () => {});
      fleet.t.defer('the Redis client reading the leases', () => client.disconnect());
      redis = client;
    }
    const hash = await redis.hgetall(`${fleet.t.ctx.redisPrefix}:conn:{${fleet.server.key}}:leases`);
    return new Map(Object.entries(hash).map(([id, n]) => [id, Number(n)]));
  };
  beforeAll(async () => {
    const t = fleet.t;
    fleet.databases = await makeStoreDatabases(fleet.server, opts.stores);
    fleet.stores = await registerFleetStores(t, fleet.server, fleet.databases, opts.owners);
    fleet.token = (await registerAdmin(t)).token;
    fleet.ordinarySlots = await withClient(fleet.server.adminUrl, async (c) => {
      const { rows } = await c.query<{ reserved: number }>(
        `SELECT sum(setting::int)::int AS reserved FROM pg_settings
          WHERE name IN ('superuser_reserved_connections', 'reserved_connections')`,
      );
      return opts.maxConnections - rows[0].reserved;
    });
    const env = {
      DATABASE_URL: t.db.url,
      REDIS_URL: fleet.redis.url,
      REDIS_PREFIX: t.ctx.redisPrefix,
      TENANT_SERVERS: fleet.server.adminUrl,
      MASTER_POOL_MAX: '4',
      CREDIT_SYNC_DELAY_MS: '0',
      ...opts.env,
    };
    fleet.instances = await Promise.all(
      Array.from({ length: opts.instances }, (_, i) => spawnFleetProcess(t, `api-${i + 1}`, 'api', env)),
    );
    fleet.worker = await spawnFleetProcess(t, 'worker', 'worker', env);
    await Promise.all(fleet.instances.map((p) => ready(p)));
  }, 240_000);
  return fleet;
}
