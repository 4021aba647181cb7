import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/**
 * The only reader of the environment. Every key is described here and in `.env.example`; the whole
 * environment is validated once and every problem is reported together at start-up.
 */

const bool = z.enum(['on', 'off', 'true', 'false', '1', '0']).transform((v) => ['on', 'true', '1'].includes(v));
const int = (def: number, min = 0, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int().min(min).max(max).default(def);
const list = z
  .string()
  .default('')
  .transform((s) =>
    s
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean),
  );

const EnvSchema = z.object({
  /** HTTP port of the API. */
  PORT: int(3000, 0, 65535),
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  /** Master database. Unset → an embedded Postgres under DATA_DIR. */
  DATABASE_URL: z.string().url().optional(),
  /** Port of the embedded Postgres (used only when DATABASE_URL is unset). */
  EMBEDDED_PG_PORT: int(54329, 1, 65535),
  /** Where development secrets and the embedded Postgres live. */
  DATA_DIR: z.string().default('.data'),
  REDIS_URL: z.string().default('redis://127.0.0.1:6379'),
  /**
   * Prefix of every Redis key (queues, rate limits, events), so that several deployments can share one Redis.
   * Default: one per master database — `tenantry` with DATABASE_URL (every instance of a deployment agrees,
   * wherever it runs), `tenantry:<hash of DATA_DIR>` with the embedded master (two clones never mix).
   */
  REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9:_-]{1,64}$/)
    .optional(),
  /** Admin URLs of the Postgres servers that hold managed tenant databases; default: the master's server. */
  TENANT_SERVERS: list,
  /** Run the queue worker inside the API process. */
  WORKER: bool.default(true),
  /**
   * Count each store request in Redis (one INCR per request, flushed into api_usage_logs by the worker) for
   * GET /api/stores/:id/usage. Off: nothing is counted (a benchmark's baseline); usage then shows no requests.
   */
  USAGE_COUNTING: bool.default(true),
  /** Where backup archives are kept (a local directory); default `<DATA_DIR>/backups`. */
  BACKUP_DIR: z.string().optional(),
  /** How long backups are kept (days) when the store's plan sets no retention of its own. */
  BACKUP_RETENTION_DAYS: int(7, 1, 3650),
  /** Backups and restores run at once per tenant server by one worker process. */
  BACKUPS_PER_SERVER: int(2, 1, 64),
  /** Hours a moved store's source database is kept (closed to connections) before maintenance drops it. */
  STORE_MOVE_KEEP_HOURS: int(24, 0, 24 * 90),
  /** Store moves run at once off one tenant server by one worker process (a drain sets its own, lower or equal). */
  STORE_MOVES_PER_SERVER: int(2, 1, 16),
  /** Prefix of the names of managed tenant databases and their roles (the store id follows). */
  TENANT_DB_PREFIX: z
    .string()
    .regex(/^[a-z][a-z0-9_]{0,30}$/)
    .default('tenant_'),
  /** Create managed databases from a template holding the current tenant schema (off: create empty and migrate). */
  TENANT_TEMPLATES: bool.default(true),
  /** Ready-made empty store databases kept on each tenant server (0: none); a new store claims one at once. */
  TENANT_WARM_POOL: int(2, 0, 500),
  /** Provisioning jobs one worker process runs at once. */
  PROVISIONING_CONCURRENCY: int(8, 1, 64),
  /** Attempts of a provisioning job before the store is marked provisioning_failed. */
  PROVISIONING_ATTEMPTS: int(3, 1, 20),
  /** A job whose worker stopped renewing its lock this long ago is handed to another worker. */
  WORKER_LOCK_MS: int(30000, 1000),
  /**
   * Whether a process that migrates the master DB at start-up also starts a fleet migration run when tenant
   * migrations are newer than some store's database (several instances starting together start one run).
   */
  TENANT_MIGRATE_ON_START: bool.default(true),
  /** The tenant migrations fleet runs apply (default: sql/tenant of the code); for tests and operators' trials. */
  TENANT_MIGRATIONS_DIR: z.string().min(1).optional(),
  /**
   * The lowest tenant schema version this code serves: `latest` (the newest tenant migration shipped, the
   * default: safe whatever a migration changes) or a number — lower it to the previous version when the new
   * code still works on the old schema (an additive migration), so a deploy never holds requests for it.
   * A store below it is migrated on its first request (held up to 2 s) or answers 503 TENANT_MIGRATING.
   */
  TENANT_MIN_SCHEMA: z.union([z.literal('latest'), z.coerce.number().int().min(0)]).default('latest'),
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  JWT_EXPIRES_IN: z
    .string()
    .regex(/^\d+[smhd]?$/, 'a number of seconds or e.g. 15m, 12h, 7d')
    .default('7d'),
  JWT_ISSUER: z.string().default('tenantry'),
  JWT_AUDIENCE: z.string().default('tenantry-api'),
  /** Comma-separated `keyId:base64key` (32-byte keys), newest first; older keys still decrypt. */
  ENCRYPTION_KEYS: z
    .string()
    .optional()
    .superRefine((value, issue) => {
      // Checked here so a bad key is reported together with every other problem.
      if (!value) return;
      try {
        if (parseEncryptionKeys(value).length === 0)
          issue.addIssue({ code: 'custom', message: 'needs at least one keyId:base64key' });
      } catch (err) {
        issue.addIssue({ code: 'custom', message: (err as Error).message.replace(/^ENCRYPTION_KEYS: /, '') });
      }
    }),
  PAYMENTS_PROVIDER: z.enum(['manual', 'stripe']).default('manual'),
  STRIPE_WEBHOOK_SECRET: z.string().optional(),
  /** A credit change waits this long (ms) before its store's tenant cache is synced; changes meanwhile share that sync. */
  CREDIT_SYNC_DELAY_MS: int(2000, 0, 60_000),
  /** Express `trust proxy` value: off, on, a hop count, or a list of addresses. */
  TRUST_PROXY: z.string().default('off'),
  /** Most tenant handles kept (an LRU). */
  TENANT_CACHE_MAX: int(5000, 1),
  /** Most connections one tenant's pool opens. */
  TENANT_POOL_MAX: int(5, 1, 100),
  /** An idle tenant connection is closed after this many ms. */
  TENANT_IDLE_MS: int(10000, 100),
  /** Most tenant connections one process (API instance or worker) opens on one Postgres server, whatever its lease there. */
  TENANT_CONNECTIONS_MAX: int(60, 1),
  /**
   * Connections of a managed tenant server kept out of the budget its processes share: provisioning's admin pools,
   * migrations, operators (the master's own server also keeps MASTER_POOL_MAX per process out).
   */
  TENANT_SERVER_HEADROOM: int(12, 0),
  /** Connections all processes together may open on an owner's external database server (its host:port). */
  EXTERNAL_SERVER_CONNECTIONS: int(10, 1),
  /** How often each server's budget (max_connections and the reserved slots) is read again (ms). */
  TENANT_SERVER_BUDGET_REFRESH_MS: int(60_000, 1000),
  /** Connections borrowed from a server's budget at a time. */
  TENANT_LEASE_BLOCK: int(4, 1, 100),
  /** How often a process renews its leases (ms); a process silent for TENANT_LEASE_TTL_MS loses them to the others. */
  TENANT_LEASE_HEARTBEAT_MS: int(1000, 50),
  TENANT_LEASE_TTL_MS: int(3000, 200),
  /** Leased connections a process has not needed for this long are given back (ms). */
  TENANT_LEASE_RETURN_MS: int(5000, 100),
  /** Longest wait for Redis in a lease call; beyond, the process uses its static share (ms). */
  TENANT_LEASE_REDIS_TIMEOUT_MS: int(250, 10, 10_000),
  /** How long a request waits for a tenant connection before failing with 503. */
  TENANT_ACQUIRE_TIMEOUT_MS: int(1500, 10),
  /** How long a failing tenant database is fenced off (fast 503s) before it is tried again. */
  TENANT_FENCE_MS: int(5000, 100),
  /**
   * Managed store database passwords older than this many days get a new one (the worker's hourly task, at most
   * TENANT_PASSWORD_ROTATION_PER_RUN stores a run); 0 (the default): only `tenantry tenants:rotate-passwords`.
   */
  TENANT_PASSWORD_ROTATION_DAYS: int(0, 0, 3650),
  TENANT_PASSWORD_ROTATION_PER_RUN: int(20, 1, 10_000),
  /**
   * Whether an external store database may be on a private, loopback or link-local address (the platform's
   * own network). Deny unless set: tests and local development set allow explicitly.
   */
  EXTERNAL_DB_PRIVATE_NETWORKS: z.enum(['allow', 'deny']).default('deny'),
  /** Server-side limits on every tenant connection (ms): one statement, one lock wait, an idle open transaction. */
  TENANT_STATEMENT_TIMEOUT_MS: int(5000, 100),
  TENANT_LOCK_TIMEOUT_MS: int(2000, 10),
  TENANT_IDLE_TX_TIMEOUT_MS: int(10000, 100),
  /** Most of TENANT_CONNECTIONS_MAX (percent) that the stores of one owner may hold together. */
  TENANT_OWNER_SHARE: int(25, 1, 100),
  /** Most bytes one request may read from its store's database (an owner's database cannot make the process hold more). */
  TENANT_MAX_READ_BYTES: int(16 * 1024 * 1024, 64 * 1024),
  /** Look-ups of unknown hostnames in the master DB, per second and instance; beyond, unknown hosts get 404 unasked. */
  HOST_LOOKUPS_PER_SECOND: int(50, 1),
  /** Domain under which every store gets `<slug>.<STORE_DOMAIN>`. */
  STORE_DOMAIN: z
    .string()
    .default('localhost')
    .transform((d) => d.trim().toLowerCase().replace(/\.$/, ''))
    .refine(
      (d) => /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(d),
      'must be a DNS name such as shops.example.com',
    ),
  /** The API's own public hostnames: never resolved to a store, never claimable (nor their subdomains). */
  PLATFORM_HOSTNAMES: list.transform((l) => l.map((h) => h.toLowerCase().replace(/\.$/, ''))),
  /** DNS servers (`ip` or `ip:port`) that hostname verification asks; default: the system's. */
  DNS_SERVERS: list,
  MASTER_POOL_MAX: int(10, 1, 100),
  CORS_ORIGINS: list,
  /**
   * Bearer token that opens GET /metrics to Prometheus (compared in constant time); a platform admin's JWT works
   * too. Unset → only admin JWTs, which expire (JWT_EXPIRES_IN).
   */
  METRICS_TOKEN: z
    .string()
    .regex(
      /^[A-Za-z0-9._~+/=-]{32,512}$/,
      'must be 32 to 512 characters of A-Z a-z 0-9 . _ ~ + / = - (e.g. openssl rand -hex 32)',
    )
    .optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  BCRYPT_ROUNDS: int(12, 4, 15),
  /** Failed logins allowed per address and e-mail in RATE_LIMIT_WINDOW_MS. */
  RATE_LIMIT_LOGIN_MAX: int(10, 1),
  /** Registrations allowed per address in RATE_LIMIT_WINDOW_MS. */
  RATE_LIMIT_REGISTER_MAX: int(20, 1),
  RATE_LIMIT_WINDOW_MS: int(15 * 60 * 1000, 1000),
  /** Failed logins allowed per account (whatever the address) in RATE_LIMIT_WINDOW_MS. */
  RATE_LIMIT_ACCOUNT_MAX: int(50, 1),
  /** Password hashes (bcrypt) computed at once per instance; more wait in a bounded queue. */
  PASSWORD_HASH_CONCURRENCY: int(1, 1, 64),
  /** Password checks that may wait for a hashing slot; beyond, 503 with Retry-After. */
  PASSWORD_HASH_QUEUE_MAX: int(64, 0, 10000),
});

export type Config = ReturnType<typeof loadConfig>;

interface Secrets {
  JWT_SECRET: string;
  ENCRYPTION_KEYS: string;
}

function devSecrets(dataDir: string): { secrets: Secrets; created: boolean; file: string } {
  const file = path.resolve(dataDir, 'dev-secrets.json');
  if (existsSync(file)) return { secrets: JSON.parse(readFileSync(file, 'utf8')) as Secrets, created: false, file };
  const secrets: Secrets = {
    JWT_SECRET: randomBytes(48).toString('base64url'),
    ENCRYPTION_KEYS: `dev1:${randomBytes(32).toString('base64')}`,
  };
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(secrets, null, 2), { mode: 0o600 });
  return { secrets, created: true, file };
}

export function parseEncryptionKeys(value: string): { id: string; key: Buffer }[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const at = entry.indexOf(':');
      if (at < 1) throw new Error('ENCRYPTION_KEYS: each entry is keyId:base64key');
      const id = entry.slice(0, at);
      const key = Buffer.from(entry.slice(at + 1), 'base64');
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(id)) throw new Error(`ENCRYPTION_KEYS: bad key id "${id}"`);
      if (key.length !== 32) throw new Error(`ENCRYPTION_KEYS: key "${id}" must be 32 bytes (base64)`);
      return { id, key };
    });
}

/** See REDIS_PREFIX. */
export function defaultRedisPrefix(databaseUrl: string | undefined, dataDir: string): string {
  if (databaseUrl) return 'tenantry';
  return `tenantry:${createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 8)}`;
}

function trustProxy(value: string): boolean | number | string {
  if (value === 'off' || value === 'false') return false;
  if (value === 'on' || value === 'true') return true;
  if (/^\d+$/.test(value)) return Number(value);
  return value;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env) {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`Invalid configuration:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  const notes: string[] = [];
  let jwtSecret = e.JWT_SECRET;
  let encryptionKeys = e.ENCRYPTION_KEYS;
  if (!jwtSecret || !encryptionKeys) {
    const missing = [!jwtSecret && 'JWT_SECRET', !encryptionKeys && 'ENCRYPTION_KEYS'].filter(Boolean).join(', ');
    if (e.NODE_ENV === 'production') {
      throw new Error(`Missing secrets in production: ${missing}. Set them in the environment (see .env.example).`);
    }
    const dev = devSecrets(e.DATA_DIR);
    jwtSecret ??= dev.secrets.JWT_SECRET;
    encryptionKeys ??= dev.secrets.ENCRYPTION_KEYS;
    notes.push(`${dev.created ? 'Generated' : 'Using'} development secrets for ${missing} in ${dev.file}`);
  }
  if (e.NODE_ENV === 'production' && e.PAYMENTS_PROVIDER === 'manual') {
    throw new Error('PAYMENTS_PROVIDER=manual completes purchases without payment and is refused in production.');
  }
  if (e.PAYMENTS_PROVIDER === 'stripe' && !e.STRIPE_WEBHOOK_SECRET) {
    throw new Error('PAYMENTS_PROVIDER=stripe needs STRIPE_WEBHOOK_SECRET.');
  }
  return Object.freeze({
    port: e.PORT,
    env: e.NODE_ENV,
    isProduction: e.NODE_ENV === 'production',
    databaseUrl: e.DATABASE_URL,
    embeddedPgPort: e.EMBEDDED_PG_PORT,
    dataDir: path.resolve(e.DATA_DIR),
    redisUrl: e.REDIS_URL,
    redisPrefix: e.REDIS_PREFIX ?? defaultRedisPrefix(e.DATABASE_URL, e.DATA_DIR),
    tenantServers: e.TENANT_SERVERS,
    worker: e.WORKER,
    usageCounting: e.USAGE_COUNTING,
    provisioning: Object.freeze({
      concurrency: e.PROVISIONING_CONCURRENCY,
      attempts: e.PROVISIONING_ATTEMPTS,
      databasePrefix: e.TENANT_DB_PREFIX,
      templates: e.TENANT_TEMPLATES,
      warmPool: e.TENANT_WARM_POOL,
    }),
    backups: Object.freeze({
      dir: path.resolve(e.BACKUP_DIR ?? path.join(e.DATA_DIR, 'backups')),
      retentionDays: e.BACKUP_RETENTION_DAYS,
      perServer: e.BACKUPS_PER_SERVER,
    }),
    moves: Object.freeze({
      keepHours: e.STORE_MOVE_KEEP_HOURS,
      perServer: e.STORE_MOVES_PER_SERVER,
    }),
    workerLockMs: e.WORKER_LOCK_MS,
    passwordRotation: Object.freeze({
      days: e.TENANT_PASSWORD_ROTATION_DAYS,
      perRun: e.TENANT_PASSWORD_ROTATION_PER_RUN,
    }),
    fleetMigrations: Object.freeze({
      onStart: e.TENANT_MIGRATE_ON_START,
      dir: e.TENANT_MIGRATIONS_DIR ? path.resolve(e.TENANT_MIGRATIONS_DIR) : undefined,
      minSchema: e.TENANT_MIN_SCHEMA,
    }),
    jwt: Object.freeze({
      secret: jwtSecret,
      expiresIn: e.JWT_EXPIRES_IN,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
    }),
    encryptionKeys: parseEncryptionKeys(encryptionKeys),
    paymentsProvider: e.PAYMENTS_PROVIDER,
    stripeWebhookSecret: e.STRIPE_WEBHOOK_SECRET,
    creditSyncDelayMs: e.CREDIT_SYNC_DELAY_MS,
    trustProxy: trustProxy(e.TRUST_PROXY),
    tenant: Object.freeze({
      cacheMax: e.TENANT_CACHE_MAX,
      poolMax: e.TENANT_POOL_MAX,
      idleMs: e.TENANT_IDLE_MS,
      connectionsMax: e.TENANT_CONNECTIONS_MAX,
      acquireTimeoutMs: e.TENANT_ACQUIRE_TIMEOUT_MS,
      fenceMs: e.TENANT_FENCE_MS,
      externalPublicOnly: e.EXTERNAL_DB_PRIVATE_NETWORKS === 'deny',
      statementTimeoutMs: e.TENANT_STATEMENT_TIMEOUT_MS,
      lockTimeoutMs: e.TENANT_LOCK_TIMEOUT_MS,
      idleInTransactionTimeoutMs: e.TENANT_IDLE_TX_TIMEOUT_MS,
      ownerShare: e.TENANT_OWNER_SHARE / 100,
      maxReadBytes: e.TENANT_MAX_READ_BYTES,
      hostLookupsPerSecond: e.HOST_LOOKUPS_PER_SECOND,
      serverHeadroom: e.TENANT_SERVER_HEADROOM,
      externalServerConnections: e.EXTERNAL_SERVER_CONNECTIONS,
      serverBudgetRefreshMs: e.TENANT_SERVER_BUDGET_REFRESH_MS,
      leases: Object.freeze({
        blockSize: e.TENANT_LEASE_BLOCK,
        heartbeatMs: e.TENANT_LEASE_HEARTBEAT_MS,
        ttlMs: e.TENANT_LEASE_TTL_MS,
        returnAfterMs: e.TENANT_LEASE_RETURN_MS,
        callTimeoutMs: e.TENANT_LEASE_REDIS_TIMEOUT_MS,
      }),
    }),
    hostnames: Object.freeze({
      storeDomain: e.STORE_DOMAIN,
      platform: e.PLATFORM_HOSTNAMES,
      dnsServers: e.DNS_SERVERS,
    }),
    masterPoolMax: e.MASTER_POOL_MAX,
    corsOrigins: e.CORS_ORIGINS,
    metricsToken: e.METRICS_TOKEN,
    logLevel: e.LOG_LEVEL,
    bcryptRounds: e.BCRYPT_ROUNDS,
    rateLimit: Object.freeze({
      loginMax: e.RATE_LIMIT_LOGIN_MAX,
      registerMax: e.RATE_LIMIT_REGISTER_MAX,
      windowMs: e.RATE_LIMIT_WINDOW_MS,
      accountMax: e.RATE_LIMIT_ACCOUNT_MAX,
    }),
    passwordHashing: Object.freeze({ concurrency: e.PASSWORD_HASH_CONCURRENCY, queueMax: e.PASSWORD_HASH_QUEUE_MAX }),
    startupNotes: notes,
  });
}

function loadDotEnv(): void {
  const file = path.resolve('.env');
  if (process.env.NODE_ENV !== 'test' && existsSync(file)) process.loadEnvFile(file);
}

loadDotEnv();
export const config: Config = loadConfig();
