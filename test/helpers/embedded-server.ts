import { spawn } from 'node:child_process';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');

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
export async function runEmbedded(mode: 'start' | 'reuse' | 'legacy-init', dataDir: string, port: number, password: string, timeoutMs = 60000): Promise<EmbeddedChild> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/embedded-child.ts', mode, dataDir, String(port), password], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    child.stdin!.end();
    await exited;
  };
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  try {
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the embedded Postgres child did not answer in ${timeoutMs} ms: ${out}${err}`)), timeoutMs);
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
