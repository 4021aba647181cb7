import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { TestApp } from './app';

const ROOT = path.resolve(__dirname, '../..');

export interface WorkerProcess {
  child: ChildProcess;
  /** Everything it wrote to stdout and stderr (for failure messages). */
  output(): string;
  /** Resolves with the exit code or signal once the process has ended. */
  exited: Promise<number | NodeJS.Signals | null>;
  kill(signal?: NodeJS.Signals): Promise<number | NodeJS.Signals | null>;
}

const spawned = new Set<WorkerProcess>();

/**
 * `npm run worker` as its own process (`node --import tsx src/worker.ts`), working for this suite: the
 * suite's master DB and Redis prefix, the test secrets, and a short lock so a dead worker's job is
 * handed over within seconds.
 */
export function spawnWorker(t: TestApp, env: Record<string, string> = {}): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/worker.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'test',
      LOG_LEVEL: 'silent',
      DATABASE_URL: t.db.url,
      REDIS_URL: t.ctx.config.redisUrl,
      REDIS_PREFIX: t.ctx.redisPrefix,
      WORKER_LOCK_MS: '2000',
      TENANT_DB_PREFIX: process.env.TENANT_DB_PREFIX ?? '',
      TENANT_WARM_POOL: process.env.TENANT_WARM_POOL ?? '0',
      JWT_SECRET: process.env.JWT_SECRET ?? '',
      ENCRYPTION_KEYS: process.env.ENCRYPTION_KEYS ?? '',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | NodeJS.Signals | null>((resolve) =>
    child.once('exit', (code, signal) => resolve(signal ?? code)),
  );
  const worker: WorkerProcess = {
    child,
    output: () => out,
    exited,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  spawned.add(worker);
  void exited.then(() => spawned.delete(worker));
  return worker;
}

/** End every worker process this file spawned that is still running (for afterAll). */
export async function killAllWorkers(): Promise<void> {
  await Promise.all(
    [...spawned].map(async (w) => {
      w.child.kill('SIGTERM');
      const timer = setTimeout(() => w.child.kill('SIGKILL'), 3000);
      await w.exited;
      clearTimeout(timer);
    }),
  );
}
