import { config as defaultConfig, type Config } from './config';
import { startEmbeddedPostgres, type EmbeddedServer } from './db/embedded';
import { ConnectionManager } from './db/connection-manager';
import { openMasterDb, type MasterDb } from './db/master';
import { runMigrations } from './db/migrate';
import { ServerLeases } from './db/server-leases';
import { tenantServers } from './db/tenant-servers';
import type { AppContext } from './app-context';
import { RevocationList } from './db/revocations';
import { AdminPools } from './db/tenant-server-admin';
import { storefrontRefusal } from './stores/lifecycle';
import { BatchedCounter } from './lib/batched-counter';
import { busChannel, EventBus } from './lib/bus';
import { Encryptor } from './lib/crypto';
import { TokenSigner } from './lib/jwt';
import { logger, safeUrl } from './lib/logger';
import { connectRedis, createRedis } from './lib/redis';
import { Queues } from './queue/queues';
import { migrateStore } from './migrations/migration-runner';
import { fleetTargetVersion, minTenantSchema, startRunIfFleetBehind } from './migrations/migration-runs.service';
import { REQUEST_COUNTER_TTL_SECONDS } from './usage/request-counter';

export interface ContextOptions {
  config?: Config;
  /** Master DB URL; defaults to DATABASE_URL, else the embedded Postgres. */
  masterUrl?: string;
  redisPrefix?: string;
}

/**
 * Resolve the master database (starting the embedded one if none is configured) and migrate it. The
 * command line passes `reuseRunningEmbedded`: the embedded server the API already runs is used as it is.
 */
export async function prepareMaster(
  config: Config,
  masterUrl?: string,
  opts: { reuseRunningEmbedded?: boolean } = {},
): Promise<{ url: string; embedded?: EmbeddedServer }> {
  let embedded: EmbeddedServer | undefined;
  let url = masterUrl ?? config.databaseUrl;
  if (!url) {
    logger.info(
      { port: config.embeddedPgPort },
      'DATABASE_URL is not set: starting the embedded Postgres under %s',
      config.dataDir,
    );
    const started = await startEmbeddedPostgres(config.dataDir, config.embeddedPgPort, {
      reuseRunning: opts.reuseRunningEmbedded,
      // Only to move a cluster created by an older version (whose password this was) to its own secret.
      legacyPassword: config.jwt.secret.slice(0, 24),
      notify: (message) => logger.info(message),
      serverLog: (line) =>
        (/\b(ERROR|FATAL|PANIC):/.test(line) ? logger.warn : logger.debug).call(
          logger,
          { embeddedPostgres: true },
          line,
        ),
    });
    embedded =
      started.pid === undefined
        ? started
        : {
            ...started,
            stop: () =>
              started.stop().then(() => logger.info({ postgresPid: started.pid }, 'embedded Postgres stopped')),
          };
    if (started.pid !== undefined)
      logger.info({ postgresPid: started.pid, dataDirectory: started.databaseDir }, 'embedded Postgres running');
    url = embedded.url;
  }
  try {
    const { applied, schemaVersion } = await runMigrations('master', { connectionString: url });
    logger.info({ applied, schemaVersion, master: safeUrl(url) }, 'master schema is up to date');
  } catch (err) {
    await embedded?.stop().catch(() => {});
    throw err;
  }
  return { url, embedded };
}

export async function createContext(options: ContextOptions = {}): Promise<AppContext> {
  const config = options.config ?? defaultConfig;
  const redis = createRedis(config.redisUrl, 'commands');
  const subscriber = createRedis(config.redisUrl, 'subscriber');
  // What has been opened so far, closed again if a later step fails (else its sockets keep the process alive).
  let opened: { embedded?: EmbeddedServer; master?: MasterDb } = {};
  const closeOpened = async () => {
    await opened.master?.sequelize.close().catch(() => {});
    subscriber.disconnect();
    redis.disconnect();
    await opened.embedded?.stop().catch(() => {});
  };
  try {
    await connectRedis(redis, config.redisUrl);
    await connectRedis(subscriber, config.redisUrl);

    const { url, embedded } = await prepareMaster(config, options.masterUrl);
    opened = { embedded };
    const master = openMasterDb(url, config.masterPoolMax);
    opened.master = master;
    const redisPrefix = options.redisPrefix ?? config.redisPrefix;
    const bus = new EventBus(redis, subscriber, busChannel(redisPrefix));
    await bus.start();
    const revocations = new RevocationList(master.models, bus);
    await revocations.load();

    const encryptor = new Encryptor(config.encryptionKeys);
    // One connection budget per Postgres server, leased through Redis with every other instance and worker.
    const leases = new ServerLeases(config.redisUrl, { prefix: redisPrefix, ...config.tenant.leases });
    // The lowest tenant schema this code serves; a store below it is migrated (with this context) before it is.
    const minSchema = minTenantSchema(config);
    if (minSchema > fleetTargetVersion(config))
      throw new Error(
        `TENANT_MIN_SCHEMA (${minSchema}) is above the newest tenant migration (${fleetTargetVersion(config)}): no store could be served`,
      );
    let ctxForMigrations: AppContext | undefined;
    const serverKey = (adminUrl: string) => `${new URL(adminUrl).hostname}:${Number(new URL(adminUrl).port || 5432)}`;
    const tenants = new ConnectionManager(
      master,
      encryptor,
      bus,
      {
        ...config.tenant,
        managedServers: tenantServers({ config, masterUrl: url }).map((s) => ({ key: s.key, adminUrl: s.adminUrl })),
        masterKey: serverKey(url),
        masterPoolMax: config.masterPoolMax,
        schema: {
          minVersion: minSchema,
          migrate: async (storeId) => {
            const done = await migrateStore(ctxForMigrations!, storeId);
            return done.outcome === 'failed' ? null : done.toVersion;
          },
        },
      },
      storefrontRefusal,
      leases,
    );

    const ctx: AppContext = {
      config,
      masterUrl: url,
      master,
      redis,
      bus,
      tokens: new TokenSigner(config.jwt),
      encryptor,
      revocations,
      tenants,
      adminPools: new AdminPools(),
      queues: new Queues({ config, redisPrefix }),
      redisPrefix,
      requestCounts: new BatchedCounter(redis, {
        intervalMs: 1000,
        ttlSeconds: REQUEST_COUNTER_TTL_SECONDS,
        onError: (err, keys) => logger.warn({ err: err.message, keys }, 'store request counts not yet in Redis'),
      }),
      async close() {
        revocations.stop();
        await ctx.requestCounts.close();
        await ctx.queues.close();
        await tenants.close();
        await ctx.adminPools.close();
        await master.sequelize.close();
        subscriber.disconnect();
        await redis.quit().catch(() => redis.disconnect());
        if (embedded) await embedded.stop();
      },
    };
    ctxForMigrations = ctx;
    if (config.fleetMigrations.onStart) {
      // The master is migrated: tenant databases behind this code's tenant migrations get a run (one, however
      // many instances start). A failure here is logged, not fatal: the sweep or an operator can start it.
      await startRunIfFleetBehind(ctx).catch((err: Error) =>
        logger.error({ err: err.message }, 'could not start the tenant migration run'),
      );
    }
    return ctx;
  } catch (err) {
    await closeOpened();
    throw err;
  }
}
