import { createServer, type Server } from 'node:http';
import { createApp } from './app';
import { config } from './config';
import type { AppContext } from './app-context';
import { createContext } from './context';
import { logger } from './lib/logger';
import { runProcess } from './lib/process-lifecycle';
import { issueMissingPlatformHostnames } from './stores/hostnames.service';
import { startWorkers, type Workers } from './worker';

/** The HTTP process: the API, and the queue worker too unless WORKER=off. */

/** What has been started so far: a stop during start-up closes exactly that. */
interface Parts {
  ctx?: AppContext;
  workers?: Workers;
  server?: Server;
}

async function start(parts: Parts, stopping: () => boolean): Promise<void> {
  for (const note of config.startupNotes) logger.warn(note);
  const ctx = (parts.ctx = await createContext());
  if (stopping()) return;
  const issued = await issueMissingPlatformHostnames(ctx);
  if (issued.length)
    logger.info(
      { count: issued.length },
      'issued <slug>.%s hostnames to active stores that had none',
      config.hostnames.storeDomain,
    );
  if (config.worker) parts.workers = await startWorkers(ctx);
  if (stopping()) return;
  parts.server = await listen(createServer(createApp(ctx)), config.port);
  parts.server.keepAliveTimeout = 65_000;
  logger.info(
    `Tenantry is listening on http://localhost:${config.port} (docs: http://localhost:${config.port}/docs)${parts.workers ? ', worker running' : ''}`,
  );
}

function listen(server: Server, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new Error(`Port ${port} is taken by another program: stop it, or set PORT to a free port.`)
          : err,
      );
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

const parts: Parts = {};
runProcess({
  start: (stopping) => start(parts, stopping),
  close: () => close(parts),
  stoppingMessage: 'shutting down: no new connections, finishing requests and jobs in flight',
});
