import { spawn } from 'node:child_process';
import path from 'node:path';
import { within } from './teardown';

const ROOT = path.resolve(__dirname, '../..');
/** How long a child gets to stop its server before it is killed at tear-down. */
const STOP_WITHIN_MS = 15_000;

/** The children this file started that have not exited yet. */
const children = new Set<{ pid: number | undefined; stop(): Promise<void>; kill(): Promise<void> }>();

/**
 * Stop every child still running (also those a failed test did not get to stop), each bounded: one
 * that does not stop in time is killed, and named in the error thrown once all are done.
 */
export async function stopEmbeddedChildren(): Promise<void> {
  const failures: string[] = [];
  await Promise.all(
    [...children].map(async (c) => {
      try {
        await within(c.stop(), STOP_WITHIN_MS, `stopping the embedded Postgres child ${c.pid}`);
      } catch (err) {
        failures.push((err as Error).message);
        await c.kill();
      }
    }),
  );
  if (failures.length) throw new Error(`${failures.join('; ')}: killed`);
}

export interface EmbeddedChild {
  /**
   * What the child printed: {url} once the server is up (with the server's pid and data directory when it
   * started one), {error} if it could not start, {done} after legacy-init.
   */
  result: { url?: string; pid?: number; databaseDir?: string; error?: string; done?: boolean };
  /** Stop the server (if any) and wait for the child to exit. */
  stop(): Promise<void>;
  /** Kill the child (not the server) with SIGKILL, as a crash would, and wait for it to exit. */
  crash(): Promise<void>;
}

/**
 * src/db/embedded.ts in a child process (see embedded-child.ts): `start` as the API starts it, `reuse` as
 * the command line does, or `legacy-init` to make a data directory the way versions before the secret file did.
 */
export async function runEmbedded(
  mode: 'start' | 'reuse' | 'legacy-init',
  dataDir: string,
  port: number,
  password: string,
  timeoutMs = 60000,
): Promise<EmbeddedChild> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'test/helpers/embedded-child.ts', mode, dataDir, String(port), password],
    {
      cwd: ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    child.stdin!.end();
    await exited;
  };
  const tracked = {
    pid: child.pid,
    stop,
    async kill() {
      child.kill('SIGKILL');
      await exited;
      // A server it started that inherited the pipes would hold them, and jest with them.
      for (const stream of [child.stdin, child.stdout, child.stderr]) stream?.destroy();
    },
  };
  children.add(tracked);
  void exited.then(() => children.delete(tracked));
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  try {
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the embedded Postgres child did not answer in ${timeoutMs} ms: ${out}${err}`)),
        timeoutMs,
      );
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const end = out.indexOf('\n');
        if (end >= 0) {
          clearTimeout(timer);
          resolve(out.slice(0, end));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the embedded Postgres child exited (${code}): ${out}${err}`));
      });
    });
    const crash = async () => {
      child.kill('SIGKILL');
      await exited;
    };
    return { result: JSON.parse(line), stop, crash };
  } catch (e) {
    child.kill('SIGKILL');
    await exited;
    throw e;
  }
}
