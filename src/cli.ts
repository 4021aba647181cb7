import os from 'node:os';
import { Command } from 'commander';
import {
  grantPlatformAdmin,
  revokePlatformAdmin,
  type PlatformAdminDeps,
  type RoleChange,
} from './admin/platform-admins';
import { config } from './config';
import { prepareMaster } from './context';
import { openMasterDb, type MasterDb } from './db/master';
import type { EmbeddedServer } from './db/embedded';
import { busChannel, EventBus } from './lib/bus';
import { logger } from './lib/logger';
import { connectRedis, createRedis } from './lib/redis';
import { registerHygieneCommands } from './hygiene/hygiene-cli';
import { registerFleetCheckCommands } from './hygiene/fleet-check-cli';
import { registerFleetCommands } from './migrations/migration-cli';
import type { FleetDeps } from './migrations/migration-runs.service';
import { registerMoveCommands } from './moves/move-cli';
import type { MoveDeps } from './moves/moves.service';
import { Queues } from './queue/queues';

/**
 * The operator's command line (`npx tenantry …`). It uses the server's configuration and service code, but
 * opens only what a command needs: the master DB (DATABASE_URL, else the embedded Postgres — the one the API
 * is running, or started for the command and stopped after) and a Redis connection to publish on the bus.
 */

async function withPlatform<T>(run: (deps: PlatformAdminDeps) => Promise<T>): Promise<T> {
  const redis = createRedis(config.redisUrl, 'cli');
  // Before anything changes: the other instances must hear of it.
  await connectRedis(redis, config.redisUrl);
  let embedded: EmbeddedServer | undefined;
  let master: MasterDb | undefined;
  try {
    const prepared = await prepareMaster(config, undefined, { reuseRunningEmbedded: true });
    embedded = prepared.embedded;
    master = openMasterDb(prepared.url, 1);
    // Publishes only: never started, so it needs no subscriber connection of its own.
    const bus = new EventBus(redis, redis, busChannel(config.redisPrefix));
    return await run({ master, bus });
  } finally {
    await master?.sequelize.close();
    await embedded?.stop();
    await redis.quit().catch(() => redis.disconnect());
  }
}

/**
 * The fleet commands (migrations, moves): the master DB and its URL (the tenant servers default to its server),
 * and the queues to hand the work to the workers.
 */
async function withFleet<T>(run: (deps: FleetDeps & MoveDeps) => Promise<T>): Promise<T> {
  let embedded: EmbeddedServer | undefined;
  let master: MasterDb | undefined;
  const queues = new Queues({ config, redisPrefix: config.redisPrefix });
  try {
    const prepared = await prepareMaster(config, undefined, { reuseRunningEmbedded: true });
    embedded = prepared.embedded;
    master = openMasterDb(prepared.url, 2);
    return await run({ master, queues, config, masterUrl: prepared.url });
  } finally {
    await queues.close();
    await master?.sequelize.close();
    await embedded?.stop();
  }
}

/**
 * The hygiene commands: the master DB and its URL. A password rotation holds a lock on one connection while it
 * writes on another: two per store rotated at once (at most 4), and one to spare.
 */
async function withMaster<T>(run: (master: MasterDb, masterUrl: string) => Promise<T>): Promise<T> {
  let embedded: EmbeddedServer | undefined;
  let master: MasterDb | undefined;
  try {
    const prepared = await prepareMaster(config, undefined, { reuseRunningEmbedded: true });
    embedded = prepared.embedded;
    master = openMasterDb(prepared.url, 9);
    return await run(master, prepared.url);
  } finally {
    await master?.sequelize.close();
    await embedded?.stop();
  }
}

/** Who ran the command, for the audit log. */
function operator(): string {
  let user = 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    // A container user without a passwd entry.
  }
  return `cli:${user}@${os.hostname()}`;
}

function report(change: RoleChange): void {
  const admin = change.role === 'platform_admin';
  if (change.changed)
    console.log(admin ? `${change.email} is now a platform admin.` : `${change.email} is no longer a platform admin.`);
  else
    console.log(
      admin
        ? `${change.email} is already a platform admin.`
        : `${change.email} is not a platform admin; nothing to revoke.`,
    );
}

function buildProgram(): Command {
  const program = new Command();
  program
    .name('tenantry')
    .description(
      'Operator commands of a Tenantry deployment (same configuration as the server: .env, DATABASE_URL, REDIS_URL, REDIS_PREFIX).',
    )
    .option('--verbose', 'show the server log lines (master DB start-up, migrations)')
    .hook('preAction', (cmd) => {
      logger.level = cmd.opts<{ verbose?: boolean }>().verbose ? config.logLevel : 'warn';
    });
  program
    .command('admin:grant')
    .description('make an existing account a platform admin')
    .argument('<email>', "the account's e-mail")
    .action(async (email: string) => report(await withPlatform((deps) => grantPlatformAdmin(deps, email, operator()))));
  program
    .command('admin:revoke')
    .description('take the platform admin role from an account (its tokens lose admin access at once)')
    .argument('<email>', "the account's e-mail")
    .action(async (email: string) =>
      report(await withPlatform((deps) => revokePlatformAdmin(deps, email, operator()))),
    );
  registerFleetCommands(program, withFleet, operator);
  registerHygieneCommands(program, withMaster, operator);
  registerFleetCheckCommands(program, withMaster, operator);
  registerMoveCommands(program, withFleet, operator);
  return program;
}

void buildProgram()
  .parseAsync(process.argv)
  .then(
    // A command that follows a fleet migration run sets its own code (see migrations/migration-cli.ts).
    () => Number(process.exitCode ?? 0),
    (err: Error) => {
      // A refusal (unknown e-mail) is told as it is; anything else too, without a stack trace.
      console.error(`error: ${err.message}`);
      return 1;
    },
  )
  // Explicitly: the embedded Postgres package's exit hook would otherwise end the process with 0.
  .then((code) => process.exit(code));
