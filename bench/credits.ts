/**
 * Credits benchmark: spend throughput through the whole stack (auth, access check, the one-statement ledger
 * change, the queued cache sync), with autocannon against a running server and a separate worker process
 * that keeps every store's tenant cache in sync, as deployed.
 *   read, 1 store       GET /api/stores/:id/credits (a master read, no lock): the stack's baseline
 *   spend, 1 hot store  every request spends on one store: all of them queue on its balance row lock
 *   spend, N stores     round-robin over N stores: no shared lock
 * Every spend carries its own idempotency key. Afterwards the ledger invariant is checked for every store
 * (balance = sum of its completed rows, seq dense, nothing negative, one row per 201 answer), and the
 * tenant caches must catch up with the master.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { runMigrations } from '../src/db/migrate';
import {
  admin,
  ADMIN_URL,
  benchConnection,
  databaseUrl,
  printTable,
  stableUuid,
  startServer,
  stopProcess,
  summarize,
  type Summary,
} from './common';
import { Encryptor, secretContext } from '../src/lib/crypto';
import { TokenSigner } from '../src/lib/jwt';
import { withClient } from '../src/db/pg-client';
import { AdminPools, ensureTenantDatabase, ident } from '../src/db/tenant-server-admin';
import { migrateTenant } from '../src/provisioning/tenant-db';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = 'tenantry_bench_credits';
const ROLE = `${PREFIX}_role`;
const PASSWORD = 'bench-credits-role-password';
const PORT = Number(process.env.BENCH_CREDITS_PORT ?? 3998);
const START_BALANCE = 1_000_000_000;

interface Result extends Summary {
  /** 2xx answers over the warm-up and the measured run. */
  ok: number;
  /** Requests sent but not answered when autocannon stopped (the server may still have done them). */
  cutOff: number;
}

const tenantConnection = (database: string) => benchConnection(database, { user: ROLE, password: PASSWORD });

const tenantDb = (i: number) => `${PREFIX}_t_${String(i).padStart(3, '0')}`;

const storeUuid = (i: number) => stableUuid('tenantry-bench-credits-store', i);

async function dropTenants(): Promise<void> {
  const { rows } = await admin(`SELECT datname FROM pg_database WHERE datname LIKE '${PREFIX}\\_%'`);
  for (const r of rows) await admin(`DROP DATABASE IF EXISTS ${ident(r.datname as string)} WITH (FORCE)`);
}

/** Fresh tenant databases (the newest tenant schema, empty credit caches), made from one template. */
async function prepareTenants(stores: number): Promise<void> {
  await dropTenants();
  const template = `${PREFIX}_tpl`;
  const pools = new AdminPools();
  await ensureTenantDatabase(pools, ADMIN_URL, { database: template, role: ROLE, password: PASSWORD }).finally(() =>
    pools.close(),
  );
  await migrateTenant(tenantConnection(template));
  await admin(`ALTER ROLE ${ident(ROLE)} CONNECTION LIMIT -1`);
  await withClient(ADMIN_URL, async (c) => {
    for (let i = 0; i < stores; i++)
      await c.query(`CREATE DATABASE ${ident(tenantDb(i))} TEMPLATE ${ident(template)} OWNER ${ident(ROLE)}`);
  });
}

/** A fresh master: one owner, N active stores on those databases, each funded by one adjustment. */
async function prepareMaster(
  stores: number,
  encryptor: Encryptor,
): Promise<{ url: string; ownerId: string; storeIds: string[] }> {
  const master = `${PREFIX}_master`;
  await admin(`DROP DATABASE IF EXISTS ${master} WITH (FORCE)`);
  await admin(`CREATE DATABASE ${master}`);
  const url = databaseUrl(master);
  await runMigrations('master', { connectionString: url });
  const storeIds = Array.from({ length: stores }, (_, i) => storeUuid(i));
  const ownerId = await withClient(url, async (c) => {
    const { rows } = await c.query(
      `INSERT INTO users (email, password_hash, name) VALUES ('bench-credits@example.test', 'x', 'Bench') RETURNING id`,
    );
    const owner = rows[0].id as string;
    const creds = storeIds.map((id, i) =>
      encryptor.encryptJson(tenantConnection(tenantDb(i)), secretContext.storeCredentials(id)),
    );
    await c.query(
      `INSERT INTO stores (id, name, slug, status, owner_id) SELECT id, 'Bench ' || n, 'bench-' || n, 'active', $2 FROM unnest($1::uuid[]) WITH ORDINALITY AS s(id, n)`,
      [storeIds, owner],
    );
    await c.query(
      `INSERT INTO store_members (store_id, user_id, role) SELECT id, $2, 'owner' FROM unnest($1::uuid[]) AS s(id)`,
      [storeIds, owner],
    );
    await c.query(
      `INSERT INTO store_databases (store_id, mode, server, database_name, credentials, status, schema_version)
         SELECT id, 'managed', 'bench', 'bench', cred, 'ready', 1 FROM unnest($1::uuid[], $2::text[]) AS s(id, cred)`,
      [storeIds, creds],
    );
    await c.query(
      `INSERT INTO credit_transactions (store_id, type, status, amount, balance_after, seq, reason)
         SELECT id, 'adjustment', 'completed', $2, $2, 1, 'benchmark funds' FROM unnest($1::uuid[]) AS s(id)`,
      [storeIds, START_BALANCE],
    );
    await c.query(
      `INSERT INTO credit_balances (store_id, balance, seq) SELECT id, $2, 1 FROM unnest($1::uuid[]) AS s(id)`,
      [storeIds, START_BALANCE],
    );
    return owner;
  });
  return { url, ownerId, storeIds };
}

/** `npm run worker` as its own process; ready once it says so. */
function startWorker(env: Record<string, string>): Promise<ChildProcess> {
  const child = fork(path.join(__dirname, '..', 'src', 'worker.ts'), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, ...env, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    let seen = '';
    let warnings = 0;
    child.stdout!.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      // Pass the worker's warnings and errors on (a few), so a failing sync is seen.
      for (const line of text.split('\n')) {
        if (/"level":(4|5|6)\d/.test(line) && warnings++ < 20) console.error(`  worker: ${line.slice(0, 300)}`);
        if (process.env.BENCH_CREDITS_WORKER_LOG && /"level":(4|5|6)\d/.test(line))
          appendFileSync(process.env.BENCH_CREDITS_WORKER_LOG, line + '\n');
      }
      seen += text;
      if (seen.includes('Tenantry worker running')) {
        seen = '';
        resolve(child);
      }
      if (seen.length > 100_000) seen = seen.slice(-1000);
    });
    child.once('exit', (code) => reject(new Error(`bench worker exited with ${code}`)));
  });
}

async function run(
  name: string,
  opts: {
    duration: number;
    connections: number;
    token: string;
    method: 'GET' | 'POST';
    path: () => string;
    body?: () => string;
  },
): Promise<Result> {
  const once = (duration: number) =>
    autocannon({
      url: `http://127.0.0.1:${PORT}`,
      connections: opts.connections,
      duration,
      headers: { authorization: `Bearer ${opts.token}`, 'content-type': 'application/json' },
      requests: [
        {
          method: opts.method,
          setupRequest: (req) => ({ ...req, path: opts.path(), ...(opts.body ? { body: opts.body() } : {}) }),
        },
      ],
    });
  const warm = await once(2);
  const r = await once(opts.duration);
  return {
    ...summarize(name, r),
    ok: warm['2xx'] + r['2xx'],
    cutOff: warm.requests.sent - warm.requests.total + (r.requests.sent - r.requests.total),
  };
}

function printResults(results: Result[]): void {
  printTable(
    ['scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx'],
    results.map((r) => [r.name, r.rps, r.p50, r.p99, r.errors, r.non2xx]),
  );
}

interface Invariant {
  stores: number;
  balanceMismatches: number;
  seqMismatches: number;
  negativeRows: number;
  minBalance: number;
  spendRows: number;
}

/** The ledger's invariant over every store, in the master. */
async function checkLedger(masterUrl: string): Promise<Invariant> {
  const { rows } = await withClient(masterUrl, (c) =>
    c.query(`
      SELECT count(*)::int AS stores,
             count(*) FILTER (WHERE b.balance <> coalesce(l.total, 0))::int AS "balanceMismatches",
             count(*) FILTER (WHERE b.seq <> coalesce(l.n, 0) OR b.seq <> coalesce(l.maxseq, 0))::int AS "seqMismatches",
             (SELECT count(*) FROM credit_transactions WHERE balance_after < 0)::int AS "negativeRows",
             min(b.balance)::float8 AS "minBalance",
             (SELECT count(*) FROM credit_transactions WHERE type = 'spend')::int AS "spendRows"
        FROM credit_balances b
        LEFT JOIN (SELECT store_id, sum(amount) AS total, count(*) AS n, max(seq) AS maxseq
                     FROM credit_transactions WHERE status = 'completed' GROUP BY store_id) l USING (store_id)`),
  );
  return rows[0] as Invariant;
}

/** Seconds until every store's tenant cache holds its master balance and all its ledger rows. */
async function waitForCaches(
  masterUrl: string,
  storeIds: string[],
  timeoutMs = Number(process.env.BENCH_CREDITS_CACHE_WAIT_MS ?? 180_000),
): Promise<{ seconds: number; behind: number }> {
  const started = Date.now();
  const expected = new Map<string, { balance: string; seq: string }>();
  let pending = storeIds.map((id, i) => ({ id, db: tenantDb(i) }));
  while (pending.length && Date.now() - started < timeoutMs) {
    // Read the master each round: requests still queued in the server when the load stopped finish late.
    await withClient(masterUrl, async (c) => {
      const { rows } = await c.query('SELECT store_id, balance::text, seq::text FROM credit_balances');
      for (const r of rows) expected.set(r.store_id as string, { balance: r.balance as string, seq: r.seq as string });
    });
    const still: typeof pending = [];
    for (const s of pending) {
      const { rows } = await withClient(databaseUrl(s.db), (c) =>
        c.query(
          'SELECT (SELECT balance::text FROM credit_balance_cache) AS balance, (SELECT count(*)::text FROM credit_spending_log) AS n',
        ),
      );
      const want = expected.get(s.id)!;
      if (rows[0].balance !== want.balance || rows[0].n !== want.seq) {
        still.push(s);
        if (Date.now() - started > timeoutMs - 1000 && still.length <= 3)
          console.error(`  behind: ${s.id} master ${want.balance}/${want.seq} tenant ${rows[0].balance}/${rows[0].n}`);
      }
    }
    pending = still;
    if (pending.length) await new Promise((r) => setTimeout(r, 500));
  }
  return { seconds: +((Date.now() - started) / 1000).toFixed(1), behind: pending.length };
}

async function clearRedis(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true });
  await redis.connect();
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

export async function creditsBenchmark(opts: {
  stores: number;
  duration: number;
  connections: number;
  rounds: number;
}): Promise<void> {
  const keyB64 = randomBytes(32).toString('base64');
  const encryptor = new Encryptor([{ id: 'bench', key: Buffer.from(keyB64, 'base64') }]);
  const jwtSecret = randomBytes(32).toString('hex');
  const redisPrefix = `bench-credits-${randomBytes(3).toString('hex')}`;
  console.log(`preparing ${opts.stores} stores with their tenant databases…`);
  await prepareTenants(opts.stores);
  const { url: masterUrl, ownerId, storeIds } = await prepareMaster(opts.stores, encryptor);
  const token = new TokenSigner({
    secret: jwtSecret,
    expiresIn: '2h',
    issuer: 'tenantry',
    audience: 'tenantry-api',
  }).sign({ sub: ownerId, typ: 'platform', role: 'user', storeId: null }).token;

  const env = {
    NODE_ENV: 'development',
    PORT: String(PORT),
    DATABASE_URL: masterUrl,
    REDIS_URL,
    REDIS_PREFIX: redisPrefix,
    LOG_LEVEL: 'warn',
    JWT_SECRET: jwtSecret,
    ENCRYPTION_KEYS: `bench:${keyB64}`,
    PAYMENTS_PROVIDER: 'manual',
    // The worker's tenant connections (one per store it syncs), within the server's max_connections of 100.
    TENANT_CONNECTIONS_MAX: '50',
    // bench/server.ts also serves a fixed-handle baseline; point it at a real database.
    BENCH_FIXED_STORE: storeIds[0],
    BENCH_FIXED_CONNECTION: JSON.stringify(tenantConnection(tenantDb(0))),
  };
  const api = await startServer({ ...env, WORKER: 'off' });
  const worker = await startWorker(env).catch(async (err) => {
    await stopProcess(api);
    throw err;
  });
  try {
    let n = 0;
    const spendBody = () =>
      JSON.stringify({ service: 'email', quantity: 1, idempotencyKey: `bench-${redisPrefix}-${n++}` });
    let next = 0;
    const common = { duration: opts.duration, connections: opts.connections, token };
    const scenarios: [string, Parameters<typeof run>[1]][] = [
      ['read, 1 store (GET credits)', { ...common, method: 'GET', path: () => `/api/stores/${storeIds[0]}/credits` }],
      [
        'spend, 1 hot store',
        { ...common, method: 'POST', path: () => `/api/stores/${storeIds[0]}/credits/spend`, body: spendBody },
      ],
      [
        `spend, ${opts.stores} stores round-robin`,
        {
          ...common,
          method: 'POST',
          path: () => `/api/stores/${storeIds[next++ % storeIds.length]}/credits/spend`,
          body: spendBody,
        },
      ],
    ];
    const runs = new Map<string, Result[]>(scenarios.map(([name]) => [name, []]));
    for (let round = 1; round <= opts.rounds; round++) {
      for (const [name, scenario] of scenarios) {
        const r = await run(name, scenario);
        console.log(
          `  round ${round}: ${name}: ${r.rps} req/s, p50 ${r.p50} ms, p99 ${r.p99} ms, errors ${r.errors}, non-2xx ${r.non2xx}`,
        );
        runs.get(name)!.push(r);
      }
    }
    // Each scenario's best round; errors and non-2xx of all rounds.
    const results = scenarios.map(([name]) => {
      const all = runs.get(name)!;
      const best = all.reduce((a, b) => (b.rps > a.rps ? b : a));
      const total = (k: 'errors' | 'non2xx' | 'ok' | 'cutOff') => all.reduce((sum, r) => sum + r[k], 0);
      return { ...best, errors: total('errors'), non2xx: total('non2xx'), ok: total('ok'), cutOff: total('cutOff') };
    });
    console.log();
    printResults(results);
    const [read, hot, spread] = results;
    console.log(
      `\nspend 1 hot store / read = ${(hot.rps / read.rps).toFixed(2)}   spend ${opts.stores} stores / read = ${(spread.rps / read.rps).toFixed(2)}`,
    );

    const caches = await waitForCaches(masterUrl, storeIds);
    const inv = await checkLedger(masterUrl);
    const spend201 = hot.ok + spread.ok;
    const cutOff = hot.cutOff + spread.cutOff;
    // Every 201 is one row; a request autocannon stopped waiting for may have been done all the same.
    const rowsMatch = inv.spendRows >= spend201 && inv.spendRows <= spend201 + cutOff;
    const exact =
      inv.balanceMismatches === 0 &&
      inv.seqMismatches === 0 &&
      inv.negativeRows === 0 &&
      rowsMatch &&
      caches.behind === 0;
    console.log(
      `\nledger check over ${inv.stores} stores: balance = sum of completed rows ${inv.balanceMismatches === 0 ? 'everywhere' : `NOT in ${inv.balanceMismatches}`}, ` +
        `seq dense ${inv.seqMismatches === 0 ? 'everywhere' : `NOT in ${inv.seqMismatches}`}, negative rows ${inv.negativeRows}, lowest balance ${inv.minBalance}; ` +
        `${inv.spendRows} spend rows for ${spend201} answers 201 + ${cutOff} requests cut off unanswered when a run stopped`,
    );
    console.log(
      `tenant caches: ${caches.behind === 0 ? `all ${storeIds.length} caught up` : `${caches.behind} still behind`} ${caches.seconds} s after the load`,
    );
    console.log(exact ? 'INVARIANT HOLDS' : 'INVARIANT BROKEN');
  } finally {
    await Promise.all([stopProcess(api), stopProcess(worker)]);
    if (process.env.BENCH_CREDITS_KEEP) {
      console.log(`kept ${PREFIX}_* databases and Redis keys ${redisPrefix}:* for inspection`);
    } else {
      await dropTenants();
      await clearRedis(redisPrefix);
    }
  }
}
