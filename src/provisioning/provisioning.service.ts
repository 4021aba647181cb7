import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Job } from 'bullmq';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { migrationsDir } from '../db/migrate';
import { pgCode, PgCode } from '../db/errors';
import { withClient } from '../db/pg-client';
import type { TenantConnection } from '../db/tenant-handle';
import { ensureTenantDatabase } from '../db/tenant-server-admin';
import { leastLoadedServer, serverByKey, tenantServers } from '../db/tenant-servers';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import { PRIVATE_ADDRESS } from '../lib/network-guard';
import { provisioningJobId, QueueName, warmPoolRefillJobOptions } from '../queue/queues';
import { refuseIfSuspended } from '../stores/lifecycle';
import { requireStoreAccess } from '../stores/membership';
import { issuePlatformHostname } from '../stores/hostnames.service';
import { parseConnectionString, readHost } from './connection-string';
import type { ConnectDatabaseInput, ProvisioningStatus } from './provisioning.schemas';
import { claimWarmDatabase, ensureTemplate } from './templates';
import { externalAccess, prepareTenant, tenantPgConfig, type StoreSeed } from './tenant-db';

/** The tables our tenant schema creates; anything else in an external database is someone else's. */
function tenantTables(): Set<string> {
  const dir = migrationsDir('tenant');
  const names = new Set(['migrations']);
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.sql'))) {
    for (const m of readFileSync(path.join(dir, f), 'utf8').matchAll(/CREATE TABLE (?:IF NOT EXISTS )?(\w+)/gi))
      names.add(m[1]);
  }
  return names;
}

function externalConnection(input: Extract<ConnectDatabaseInput, { mode: 'external' }>): TenantConnection {
  if ('connectionString' in input) {
    const parsed = parseConnectionString(input.connectionString);
    // The body's schema refuses these already; this keeps the service safe on its own.
    if (!parsed.ok) {
      throw fail(ErrorCode.VALIDATION_FAILED, 'The connection string is not valid', {
        errors: [{ path: 'connectionString', message: parsed.reason }],
      });
    }
    const { sslmode, ...c } = parsed.connection;
    return { ...c, ssl: sslmode === 'require' ? { rejectUnauthorized: false } : sslmode === 'verify-full' };
  }
  // The form's `ssl: true` is verify-full.
  const host = readHost(input.host, { bareIpv6: true }) ?? input.host;
  return {
    host,
    port: input.port,
    database: input.database,
    user: input.user,
    password: input.password,
    ssl: input.ssl === true,
  };
}

/**
 * Whether `relations` (every table of the database) are the Tenantry schema provisioned earlier for this very
 * store — an earlier attempt that failed, say: our tables only, all ordinary tables in public, and the store
 * row written by seedWith naming this store and no other. Anything else may be another store's database.
 * The marker is read defensively: its table may lack the column, hold any number of rows or be slow.
 */
async function isOwnTenantSchema(
  client: pg.Client,
  relations: { schema: string; name: string; kind: string }[],
  storeId: string,
): Promise<boolean> {
  const ours = tenantTables();
  if (!relations.some((r) => r.name === 'stores')) return false;
  if (!relations.every((r) => r.schema === 'public' && r.kind === 'r' && ours.has(r.name))) return false;
  try {
    const { rows } = await client.query<{ id: string }>('SELECT left(id::text, 64) AS id FROM public.stores LIMIT 2');
    return rows.length === 1 && rows[0].id === storeId;
  } catch {
    return false;
  }
}

/**
 * Check an owner's own database before anything is stored or queued: reachable (on a public address,
 * unless EXTERNAL_DB_PRIVATE_NETWORKS allows private ones), accepted, and empty — or holding this store's
 * own Tenantry schema.
 */
async function checkExternalDatabase(ctx: AppContext, connection: TenantConnection, storeId: string): Promise<void> {
  const config = {
    ...tenantPgConfig(connection, externalAccess(ctx)),
    connectionTimeoutMillis: 3000,
    query_timeout: 3000,
    statement_timeout: 3000,
  };
  await withClient(
    config,
    async (client) => {
      // From the catalog, not information_schema: that shows only tables this role has privileges on, and a
      // table of another role is someone else's data all the same. One more row than our schema has is enough
      // to know it is not ours.
      const { rows } = await client.query<{ schema: string; name: string; kind: string }>(
        `SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
          LIMIT $1`,
        [tenantTables().size + 1],
      );
      if (rows.length && !(await isOwnTenantSchema(client, rows, storeId))) {
        throw fail(
          ErrorCode.DATABASE_NOT_EMPTY,
          "The database already holds tables, and they are not this store's own Tenantry schema; give it an empty database",
        );
      }
    },
    (err) => {
      const code = pgCode(err);
      if (code === PRIVATE_ADDRESS) {
        throw fail(
          ErrorCode.DATABASE_UNREACHABLE,
          'The database is on a private network address, which this platform does not connect to; give an address reachable on the internet',
        );
      }
      if (code === PgCode.INVALID_PASSWORD || code === PgCode.INVALID_AUTHORIZATION) {
        throw fail(ErrorCode.DATABASE_AUTH_FAILED, 'The database rejected these credentials');
      }
      throw fail(ErrorCode.DATABASE_UNREACHABLE, 'The database could not be reached with these settings');
    },
  );
}

async function enqueue(ctx: AppContext, storeId: string): Promise<string> {
  const queue = ctx.queues.get(QueueName.provisioning);
  const jobId = provisioningJobId(storeId);
  const existing = await queue.getJob(jobId);
  if (existing) {
    const state = await existing.getState();
    if (state !== 'completed' && state !== 'failed' && state !== 'unknown') return jobId;
    await existing.remove();
  }
  await queue.add('provision', { storeId }, { jobId, attempts: ctx.config.provisioning.attempts });
  return jobId;
}

/**
 * Queue the store's provisioning job again unless it is waiting or running (a store restored while its
 * job was skipped, say): the job finishes whatever is left, every step being idempotent.
 */
export const queueProvisioning = (ctx: AppContext, storeId: string): Promise<string> => enqueue(ctx, storeId);

/** Where the job will make a managed store's database: a new one, or the one a failed attempt began. */
async function managedConnection(
  ctx: AppContext,
  storeId: string,
): Promise<{ connection: TenantConnection; server: string }> {
  const previous = await ctx.master.models.StoreDatabase.findByPk(storeId);
  if (previous?.mode === 'managed' && previous.server && tenantServers(ctx).some((s) => s.key === previous.server)) {
    // A failed earlier attempt: finish that database rather than leave it orphaned. (Unless its server
    // was taken out of TENANT_SERVERS: the job could never reach it again, so pick a configured one.)
    return {
      connection: ctx.encryptor.decryptJson<TenantConnection>(
        previous.credentials,
        secretContext.storeCredentials(storeId),
      ),
      server: previous.server,
    };
  }
  const target = await leastLoadedServer(ctx);
  const name = `${ctx.config.provisioning.databasePrefix}${storeId.replace(/-/g, '')}`;
  return {
    connection: {
      host: target.host,
      port: target.port,
      database: name,
      user: name,
      password: randomBytes(24).toString('base64url'),
    },
    server: target.key,
  };
}

/** The store's own database, once it is reachable and holds nothing but this store's schema. */
async function checkedExternalConnection(
  ctx: AppContext,
  storeId: string,
  input: Extract<ConnectDatabaseInput, { mode: 'external' }>,
): Promise<{ connection: TenantConnection; server: null }> {
  const connection = externalConnection(input);
  await checkExternalDatabase(ctx, connection, storeId);
  return { connection, server: null };
}

/**
 * The credentials (encrypted) on the database row and the store in provisioning, under the store's row lock.
 * Nothing changes when the store moved on meanwhile: another call queued it already, or it was suspended
 * while the credentials were being checked (moving it to provisioning would lift the suspension).
 */
async function recordConnection(
  ctx: AppContext,
  userId: string,
  storeId: string,
  mode: ConnectDatabaseInput['mode'],
  { connection, server }: { connection: TenantConnection; server: string | null },
): Promise<void> {
  const { StoreDatabase, Store } = ctx.master.models;
  await ctx.master.sequelize.transaction(async (t) => {
    const locked = await Store.findByPk(storeId, { transaction: t, lock: t.LOCK.UPDATE });
    if (!locked || locked.status === 'deleted') throw noSuchStore();
    refuseIfSuspended(locked);
    if (locked.status === 'active') throw alreadyProvisioned();
    if (locked.status === 'provisioning') return;
    await StoreDatabase.upsert(
      {
        storeId,
        mode,
        server,
        databaseName: connection.database,
        credentials: ctx.encryptor.encryptJson(connection, secretContext.storeCredentials(storeId)),
        status: 'provisioning',
        lastError: null,
        jobId: provisioningJobId(storeId),
      },
      { transaction: t },
    );
    await locked.update({ status: 'provisioning' }, { transaction: t });
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.database.connected',
      targetType: 'store',
      targetId: storeId,
      data: { mode },
    });
  });
}

const alreadyProvisioned = () => fail(ErrorCode.ALREADY_PROVISIONED, 'This store already has its database');

/**
 * Connect a store to its database: check and store the credentials (encrypted), then queue the one
 * provisioning job of the store. A second call while it is queued or running answers with the same job.
 */
export async function connectDatabase(ctx: AppContext, userId: string, storeId: string, input: ConnectDatabaseInput) {
  const { store } = await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  if (store.status === 'active') throw alreadyProvisioned();
  if (store.status !== 'provisioning') {
    const target =
      input.mode === 'managed'
        ? await managedConnection(ctx, storeId)
        : await checkedExternalConnection(ctx, storeId, input);
    await recordConnection(ctx, userId, storeId, input.mode, target);
  }
  return { jobId: await enqueue(ctx, storeId), status: 'queued' as const };
}

export async function retryProvisioning(ctx: AppContext, userId: string, storeId: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const { Store, StoreDatabase } = ctx.master.models;
  await ctx.master.sequelize.transaction(async (t) => {
    const store = await Store.findByPk(storeId, { transaction: t, lock: t.LOCK.UPDATE });
    if (store?.status !== 'provisioning_failed')
      throw fail(ErrorCode.CONFLICT, 'Only a store whose provisioning failed can be retried');
    await StoreDatabase.update({ status: 'provisioning', lastError: null }, { where: { storeId }, transaction: t });
    await store.update({ status: 'provisioning' }, { transaction: t });
  });
  return { jobId: await enqueue(ctx, storeId), status: 'queued' as const };
}

const JOB_STATES: Record<string, ProvisioningStatus['state']> = {
  active: 'running',
  completed: 'completed',
  failed: 'failed',
};

export async function provisioningStatus(
  ctx: AppContext,
  userId: string,
  storeId: string,
): Promise<ProvisioningStatus> {
  const { store } = await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin', 'staff']);
  // The job's state first, then the job and the row: a job ends only once its outcome (error, schema
  // version) is written to the row, so a finished state is never shown beside older attempts or row.
  const queue = ctx.queues.get(QueueName.provisioning);
  const jobState = await queue.getJobState(provisioningJobId(storeId));
  const job = await queue.getJob(provisioningJobId(storeId));
  const db = await ctx.master.models.StoreDatabase.findByPk(storeId);
  if (!db) throw fail(ErrorCode.NOT_FOUND, 'No database has been connected to this store yet');
  if (!job && store.status === 'provisioning') await enqueue(ctx, storeId); // the queueing was lost: queue again
  const progress = (job?.progress ?? {}) as { progress?: number; step?: string };
  const state: ProvisioningStatus['state'] = job
    ? (JOB_STATES[jobState] ?? 'queued')
    : store.status === 'provisioning_failed'
      ? 'failed'
      : db.status === 'ready'
        ? 'completed'
        : 'queued';
  return {
    jobId: db.jobId ?? null,
    state,
    progress: state === 'completed' ? 100 : (progress.progress ?? 0),
    step: state === 'completed' ? 'done' : (progress.step ?? null),
    attempts: job?.attemptsMade ?? 0,
    error: db.lastError ?? null,
    schemaVersion: db.schemaVersion,
  };
}

/** What a client may see of a failure: its kind, never hosts, SQL or credentials. */
function describeFailure(err: unknown, step: string): string {
  const code = pgCode(err);
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH')
    return `${step}: the database server could not be reached`;
  if (code === PRIVATE_ADDRESS)
    return `${step}: the database is on a private network address, which this platform does not connect to`;
  if (code === PgCode.INVALID_PASSWORD || code === PgCode.INVALID_AUTHORIZATION)
    return `${step}: the database server rejected the credentials`;
  if (/timeout/i.test((err as Error)?.message ?? '')) return `${step}: the database server did not answer in time`;
  return `${step}: failed${code ? ` (SQLSTATE ${code})` : ''}`;
}

/** How long the warm pool's refill waits after the last claim. */
const WARM_REFILL_DELAY_MS = 2000;

/** What the job works from: the store, where its database lives, and what to seed it with. */
interface ProvisioningWork {
  store: { id: string; slug: string };
  mode: 'managed' | 'external';
  server: string | null;
  connection: TenantConnection;
  seed: StoreSeed;
}

/**
 * The job's steps, one at a time: each start is published as the job's progress (the status endpoint
 * reads `step` and `progress`), and how long each step took (ms) goes into the job's result — where
 * provisioning time goes, per store.
 */
function stepsOf(job: Job, started: number) {
  const durations: Record<string, number> = {};
  let timing = { name: 'load', since: started };
  return {
    durations,
    /** The step a failure is reported under: creating the database until another step starts. */
    current: 'create_database',
    begin(name: string, progress: number) {
      durations[timing.name] = Math.round(performance.now() - timing.since);
      timing = { name, since: performance.now() };
      this.current = name;
      return job.updateProgress({ step: name, progress });
    },
  };
}

/** The store still waiting for its database, or why the job has nothing to do. */
async function loadWork(ctx: AppContext, storeId: string): Promise<ProvisioningWork | { skipped: string }> {
  const { Store, StoreDatabase, User } = ctx.master.models;
  const store = await Store.findByPk(storeId);
  const db = await StoreDatabase.findByPk(storeId);
  if (!store || !db || store.status !== 'provisioning') return { skipped: store?.status ?? 'missing' };
  const owner = await User.findByPk(store.ownerId);
  return {
    store,
    mode: db.mode,
    server: db.server,
    connection: ctx.encryptor.decryptJson<TenantConnection>(db.credentials, secretContext.storeCredentials(storeId)),
    seed: {
      store: { id: store.id, name: store.name, slug: store.slug },
      owner: owner
        ? { platformUserId: owner.id, email: owner.email, name: owner.name, passwordHash: owner.passwordHash }
        : undefined,
    },
  };
}

/**
 * Role and database on the store's server (managed only), from the template or the warm pool when there
 * is one. Answers whether the database came already migrated and seeded from the warm pool.
 */
async function makeDatabase(ctx: AppContext, work: ProvisioningWork): Promise<boolean> {
  const server = serverByKey(ctx, work.server!);
  const template = ctx.config.provisioning.templates
    ? await ensureTemplate(server).catch((err: Error) => {
        logger.warn(
          { server: server.key, err: err.message },
          'no tenant template; creating the database empty and migrating it',
        );
        return null;
      })
    : null;
  const warm = template !== null && ctx.config.provisioning.warmPool > 0;
  const target = { database: work.connection.database, role: work.connection.user, password: work.connection.password };
  const { claimed } = await ensureTenantDatabase(ctx.adminPools, server.adminUrl, {
    ...target,
    template: template ?? undefined,
    claimWarm: warm ? (admin) => claimWarmDatabase(admin, target, ctx.config.provisioning.databasePrefix) : undefined,
  });
  if (warm)
    await ctx.queues
      .get(QueueName.maintenance)
      .add('refill-warm-pool', { task: 'refill-warm-pool' }, warmPoolRefillJobOptions(WARM_REFILL_DELAY_MS));
  return claimed;
}

/** Migrate and seed the store's database (under the runner's advisory lock); answers its schema version. */
async function migrate(ctx: AppContext, work: ProvisioningWork, claimed: boolean): Promise<number> {
  if (work.mode === 'managed') {
    const u = new URL(serverByKey(ctx, work.server!).adminUrl);
    u.pathname = `/${work.connection.database}`;
    return (await prepareTenant(u.toString(), work.seed, { asRole: work.connection.user, prepared: claimed }))
      .schemaVersion;
  }
  return (await prepareTenant(tenantPgConfig(work.connection, externalAccess(ctx)), work.seed)).schemaVersion;
}

/**
 * Database ready, store active and its platform hostname issued, in one transaction (it waits on the
 * store's row lock, so a suspension or deletion in flight is never overwritten); then the routing caches.
 */
async function activate(ctx: AppContext, store: ProvisioningWork['store'], schemaVersion: number): Promise<void> {
  const { Store, StoreDatabase } = ctx.master.models;
  const hostname = await ctx.master.sequelize.transaction(async (t) => {
    await StoreDatabase.update(
      { status: 'ready', schemaVersion, lastError: null },
      { where: { storeId: store.id }, transaction: t },
    );
    await Store.update({ status: 'active' }, { where: { id: store.id, status: 'provisioning' }, transaction: t });
    return issuePlatformHostname(ctx, store, t);
  });
  await ctx.tenants.invalidate(store.id);
  await ctx.tenants.hostnamesChanged([hostname]);
}

/** The failure, as a client may see it, on the database row; the store fails with the last attempt. */
async function recordFailure(
  ctx: AppContext,
  job: Job<{ storeId: string }>,
  step: string,
  err: unknown,
): Promise<void> {
  const { storeId } = job.data;
  const { Store, StoreDatabase } = ctx.master.models;
  const lastAttempt = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
  const message = describeFailure(err, step);
  logger.warn(
    { storeId, step, attempt: job.attemptsMade + 1, err: (err as Error).message },
    'provisioning step failed',
  );
  await ctx.master.sequelize.transaction(async (t) => {
    await StoreDatabase.update(
      { lastError: message, ...(lastAttempt ? { status: 'failed' as const } : {}) },
      { where: { storeId }, transaction: t },
    );
    if (lastAttempt)
      await Store.update(
        { status: 'provisioning_failed' },
        { where: { id: storeId, status: 'provisioning' }, transaction: t },
      );
  });
}

/**
 * The provisioning job. Every step is idempotent, so a retried job — or one taken over from a worker that
 * died — finishes the work: create role and database (managed), migrate under the runner's advisory lock,
 * write the store row and its first admin, mark the store active.
 */
export async function processProvisioning(ctx: AppContext, job: Job<{ storeId: string }>) {
  const started = performance.now();
  const work = await loadWork(ctx, job.data.storeId);
  if ('skipped' in work) return work;
  const steps = stepsOf(job, started);
  try {
    let claimed = false;
    if (work.mode === 'managed') {
      await steps.begin('create_database', 10);
      claimed = await makeDatabase(ctx, work);
    }
    await steps.begin('migrate', 50);
    const schemaVersion = await migrate(ctx, work, claimed);
    await steps.begin('activate', 90);
    await activate(ctx, work.store, schemaVersion);
    await steps.begin('done', 100);
    return { schemaVersion, durationMs: Math.round(performance.now() - started), steps: steps.durations };
  } catch (err) {
    await recordFailure(ctx, job, steps.current, err);
    throw err;
  }
}
