import { createServer, type Server } from 'node:http';
import { createApp } from './app';
import { config } from './config';
import { createContext, type AppContext } from './context';
import { logger } from './lib/logger';
import { issueMissingPlatformHostnames } from './stores/hostnames.service';
import { startWorkers, type Workers } from './worker';

/** The HTTP process: the API, and the queue worker too unless WORKER=off. */

/** What has been started so far: a stop during start-up closes exactly that. */
interface Parts {
  ctx?: AppContext;
  workers?: Workers;
  server?: Server;
}

const SHUTDOWN_LIMIT_MS = 25_000;

async function start(parts: Parts, stopping: () => boolean): Promise<void> {
  for (const note of config.startupNotes) logger.warn(note);
  const ctx = (parts.ctx = await createContext());
  if (stopping()) return;
  const issued = await issueMissingPlatformHostnames(ctx);
  if (issued.length) logger.info({ count: issued.length }, 'issued <slug>.%s hostnames to active stores that had none', config.hostnames.storeDomain);
  if (config.worker) parts.workers = await startWorkers(ctx);
  if (stopping()) return;
  parts.server = await listen(createServer(createApp(ctx)), config.port);
  parts.server.keepAliveTimeout = 65_000;
  logger.info(`Tenantry is listening on http://localhost:${config.port} (docs: http://localhost:${config.port}/docs)${parts.workers ? ', worker running' : ''}`);
}

function listen(server: Server, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'EADDRINUSE' ? new Error(`Port ${port} is taken by another program: stop it, or set PORT to a free port.`) : err);
    });
    server.listen(port, () => resolve(server));
  });
}

/** Close what runs, newest first: no new requests, requests in flight finished, jobs finished, then the databases. */
async function close(parts: Parts): Promise<void> {
  const { server, workers, ctx } = parts;
  if (server) {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
    });
    logger.info('HTTP server closed');
  }
  if (workers) {
    await workers.close();
    logger.info('queue workers stopped');
  }
  await ctx?.close();
}

/**
 * Signals are handled from the first line on: a supervisor may stop the process while it starts, and
 * what has started by then (the embedded Postgres above all) must stop with it. A second signal ends the
 * process at once (the embedded Postgres is still told to stop).
 */
function main(): void {
  const parts: Parts = {};
  let stopping: string | undefined;
  const startup = start(parts, () => stopping !== undefined);

  const stop = async (reason: string, exitCode: number) => {
    const force = setTimeout(() => {
      logger.error(`shutdown took longer than ${SHUTDOWN_LIMIT_MS / 1000} s, exiting`);
      process.exit(1);
    }, SHUTDOWN_LIMIT_MS).unref();
    try {
      await startup.catch(() => {});
      await close(parts);
      clearTimeout(force);
      logger.info({ reason }, exitCode === 0 ? 'stopped cleanly' : 'stopped');
      process.exit(exitCode);
    } catch (err) {
      logger.error({ err }, 'error during shutdown');
      process.exit(1);
    }
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal during shutdown: exiting now');
      process.exit(1);
    }
    stopping = signal;
    logger.info({ signal }, 'shutting down: no new connections, finishing requests and jobs in flight');
    void stop(signal, 0);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  startup.catch((err: Error) => {
    logger.fatal(err.message);
    if (stopping) return;
    stopping = 'start-up failed';
    void stop('start-up failed', 1);
  });
}

main();
