import type { Server } from 'node:http';
import { createApp } from './app';
import { config } from './config';
import { createContext, type AppContext } from './context';
import { logger } from './lib/logger';
import { issueMissingPlatformHostnames } from './stores/hostnames.service';
import { startWorkers, type Workers } from './worker';

/** The HTTP process: the API, and the queue worker too unless WORKER=off. */
async function main(): Promise<void> {
  for (const note of config.startupNotes) logger.warn(note);
  const ctx = await createContext();
  const issued = await issueMissingPlatformHostnames(ctx);
  if (issued.length) logger.info({ count: issued.length }, 'issued <slug>.%s hostnames to active stores that had none', config.hostnames.storeDomain);
  const workers: Workers | undefined = config.worker ? await startWorkers(ctx) : undefined;
  const app = createApp(ctx);
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(config.port, () => resolve(s));
  });
  server.keepAliveTimeout = 65_000;
  logger.info(`Tenantry is listening on http://localhost:${config.port} (docs: http://localhost:${config.port}/docs)${workers ? ', worker running' : ''}`);
  installShutdown(server, ctx, workers);
}

function installShutdown(server: Server, ctx: AppContext, workers?: Workers): void {
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: no new connections, finishing requests in flight');
    const force = setTimeout(() => {
      logger.error('shutdown took longer than 25 s, exiting');
      process.exit(1);
    }, 25_000).unref();
    try {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      await workers?.close();
      await ctx.close();
      clearTimeout(force);
      logger.info('stopped cleanly');
      process.exit(0);
    } catch (err) {
      logger.error({ err }, 'error during shutdown');
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((err: Error) => {
  logger.fatal(err.message);
  process.exit(1);
});
