import { logger } from './logger';

const SHUTDOWN_LIMIT_MS = 25_000;

export interface ProcessLifecycle {
  /** Start everything; `stopping()` turns true once a signal came, so start-up can stop early. */
  start(stopping: () => boolean): Promise<void>;
  /** Close whatever has started (start-up may have been cut short). */
  close(): Promise<void>;
  /** Logged when a signal begins the shutdown. */
  stoppingMessage: string;
}

/**
 * Runs a process (the API, a worker) with its signals handled from the first line on: a supervisor may
 * stop it while it starts, and what has started by then (the embedded Postgres above all) must stop with
 * it. A failed start stops what started and exits 1; a second signal ends the process at once; a shutdown
 * slower than 25 s exits 1.
 */
export function runProcess({ start, close, stoppingMessage }: ProcessLifecycle): void {
  let stopping: string | undefined;
  const startup = start(() => stopping !== undefined);

  const stop = async (reason: string, exitCode: number) => {
    const force = setTimeout(() => {
      logger.error(`shutdown took longer than ${SHUTDOWN_LIMIT_MS / 1000} s, exiting`);
      process.exit(1);
    }, SHUTDOWN_LIMIT_MS).unref();
    try {
      await startup.catch(() => {});
      await close();
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
    logger.info({ signal }, stoppingMessage);
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
