import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  lstatSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import {
  initCluster,
  packagedBinaries,
  runnableBinaries,
  serverUser,
  SHARED_ROOT,
  startServer,
} from '../../src/db/local-postgres';
import { runEmbedded, stopEmbeddedChildren, type EmbeddedChild } from '../helpers/embedded-server';
import { useResources } from '../helpers/suite';
import { freePort } from '../helpers/tcp-proxy';

/**
 * The embedded master Postgres on a first run, wherever the project is cloned: run as root (the server
 * then runs as `postgres`) from a folder that user cannot enter, and, when something else stops it, a
 * message naming the problem and the fix instead of an unhandled error.
 */
const asRoot = process.getuid?.() === 0;
const rootOnly = asRoot ? test : test.skip;
const LEGACY = 'no-legacy-password-in-these-tests';

const opened = useResources();
let root: string;
const leftovers: string[] = [];
const strayServers = new Set<number>();

beforeAll(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'tenantry-first-run-'));
  chmodSync(root, 0o755);
  opened.defer('the temporary folders', () => {
    for (const dir of leftovers) rmSync(dir, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });
  opened.defer('the servers left running', async () => {
    for (const pid of strayServers) await stopProcess(pid);
  });
  // Every child, also one a failed test did not stop.
  opened.defer('the embedded Postgres children', stopEmbeddedChildren);
});

async function start(dataDir: string, port: number): Promise<EmbeddedChild> {
  return runEmbedded('start', dataDir, port, LEGACY);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function stopProcess(pid: number, signal: NodeJS.Signals = 'SIGINT'): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, signal);
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
}

async function query(url: string, sql: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

rootOnly(
  'DATA_DIR in a folder only root can enter: the cluster lives under /var/lib/tenantry/clusters, DATA_DIR/pg links there, the folder keeps its mode, and the data survives a restart',
  async () => {
    const closed = mkdtempSync(path.join(root, 'closed-'));
    expect(statSync(closed).mode & 0o777).toBe(0o700);
    const dataDir = path.join(closed, '.data');
    const port = await freePort();

    const first = await start(dataDir, port);
    expect(first.result.error).toBeUndefined();
    const link = path.join(dataDir, 'pg');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    const clusterDir = readlinkSync(link);
    leftovers.push(path.dirname(clusterDir));
    expect(clusterDir).toMatch(new RegExp(`^${SHARED_ROOT}/clusters/[0-9a-f]{16}/pg$`));
    expect(first.result.databaseDir).toBe(clusterDir);
    expect(statSync(clusterDir).uid).toBe(serverUser()!.uid);
    expect(readFileSync(path.join(path.dirname(clusterDir), 'DATA_DIR'), 'utf8').trim()).toBe(dataDir);
    expect(statSync(closed).mode & 0o777).toBe(0o700);
    await query(first.result.url!, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')");
    await first.stop();

    const again = await start(dataDir, port);
    expect(again.result.error).toBeUndefined();
    expect(readlinkSync(link)).toBe(clusterDir);
    expect((await query(again.result.url!, 'SELECT note FROM kept')).rows).toEqual([{ note: 'still here' }]);
    await again.stop();
  },
);

rootOnly(
  'binaries the postgres user cannot run are copied once to /var/lib/tenantry, links and all, and a cluster runs from the copy',
  async () => {
    const packaged = packagedBinaries();
    const closed = mkdtempSync(path.join(root, 'closed-bin-'));
    // The binaries as they are in a checkout under /root: behind a folder of mode 700.
    cpSync(packaged.dir, path.join(closed, 'native'), { recursive: true, verbatimSymlinks: true });
    const version = `test-${randomBytes(4).toString('hex')}`;
    const inClosed = {
      ...packaged,
      dir: path.join(closed, 'native'),
      initdb: path.join(closed, 'native/bin/initdb'),
      postgres: path.join(closed, 'native/bin/postgres'),
      version,
    };
    const user = serverUser()!;
    expect(spawnSync(inClosed.postgres, ['--version'], { uid: user.uid, gid: user.gid }).error).toMatchObject({
      code: 'EACCES',
    });

    const notes: string[] = [];
    const copied = runnableBinaries(user, (m) => notes.push(m), inClosed);
    leftovers.push(copied.dir);
    expect(copied.dir).toBe(path.join(SHARED_ROOT, `postgres-${version}-${process.platform}-${process.arch}`));
    expect(notes.join('\n')).toMatch(/cannot run the Postgres binaries in .*closed-bin-.*: copying them/);
    expect(statSync(copied.dir).mode & 0o777).toBe(0o755);
    // Relative, as in the package: resolved, they would lead back behind the closed folder.
    if (process.platform === 'linux') expect(readlinkSync(path.join(copied.dir, 'lib/libpq.so'))).toBe('libpq.so.5.18');
    // Made once: a second call uses the copy as it is.
    expect(runnableBinaries(user, (m) => notes.push(m), inClosed).dir).toBe(copied.dir);
    expect(notes).toHaveLength(1);

    const dir = path.join(root, 'from-copy', 'pg');
    await initCluster(copied, dir, 'a-password', user);
    const port = await freePort();
    const server = await startServer(copied, dir, port, user);
    strayServers.add(server.pid);
    expect((await query(`postgres://postgres:a-password@127.0.0.1:${port}/postgres`, 'SELECT 1 AS one')).rows).toEqual([
      { one: 1 },
    ]);
    await server.stop();
    expect(alive(server.pid)).toBe(false);
  },
);

test('a port taken by another program: the start fails naming the port, EMBEDDED_PG_PORT and what to do', async () => {
  const dataDir = path.join(root, 'port-taken');
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const { port } = blocker.address() as net.AddressInfo;
  try {
    const child = await start(dataDir, port);
    expect(child.result.error).toMatch(
      new RegExp(
        `^Port ${port} of 127\\.0\\.0\\.1 \\(EMBEDDED_PG_PORT\\) is taken by another program: stop it, or set EMBEDDED_PG_PORT to a free port`,
      ),
    );
    await child.stop();
  } finally {
    await new Promise<void>((resolve) => blocker.close(() => resolve()));
  }
});

describe('a data directory something else holds', () => {
  const dataDir = () => path.join(root, 'held');
  let port: number;
  let clusterDir: string;

  beforeAll(async () => {
    port = await freePort();
    const made = await start(dataDir(), port);
    expect(made.result.error).toBeUndefined();
    clusterDir = made.result.databaseDir!;
    await made.stop();
  });

  test('a server left running by a process that was killed: the start names its PID and how to stop it, and works once it is stopped', async () => {
    const first = await start(dataDir(), port);
    const pid = first.result.pid!;
    strayServers.add(pid);
    await first.crash();
    expect(alive(pid)).toBe(true);

    const second = await start(dataDir(), await freePort());
    expect(second.result.error).toBe(
      `Another Postgres server (PID ${pid}) is running on ${clusterDir}: a Tenantry still running, or a server left behind by one that was killed. ` +
        `Stop it (kill -INT ${pid}) and start again. If no process ${pid} exists, ${clusterDir}/postmaster.pid is stale: delete it.`,
    );
    await second.stop();
    await stopProcess(pid);
    const third = await start(dataDir(), port);
    expect(third.result.error).toBeUndefined();
    await third.stop();
  });

  test('a stale postmaster.pid whose PID is now another program: the start says to delete that file', async () => {
    const user = serverUser();
    // A process of the server's user, which Postgres cannot tell from a server of its own.
    const sleeper = spawn('sleep', ['60'], { ...(user ? { uid: user.uid, gid: user.gid } : {}), stdio: 'ignore' });
    strayServers.add(sleeper.pid!);
    const lockFile = path.join(clusterDir, 'postmaster.pid');
    writeFileSync(lockFile, `${sleeper.pid}\n${clusterDir}\n`, { mode: 0o600 });
    if (user) chownSync(lockFile, user.uid, user.gid);

    const refused = await start(dataDir(), port);
    expect(refused.result.error).toBe(
      `${lockFile} is stale: it names PID ${sleeper.pid}, which is now another program (sleep 60). Delete that file and start again.`,
    );
    await refused.stop();
    await stopProcess(sleeper.pid!, 'SIGKILL');
    rmSync(lockFile);
    const started = await start(dataDir(), port);
    expect(started.result.error).toBeUndefined();
    await started.stop();
  });

  rootOnly(
    'a cluster owned by another user: the start names the directory, the user the server runs as, and the chown that fixes it',
    async () => {
      const user = serverUser()!;
      const nobody = 65534;
      try {
        // Enterable but someone else's: Postgres itself refuses it.
        spawnSync('chown', ['-R', `${nobody}:${nobody}`, clusterDir]);
        chmodSync(clusterDir, 0o755);
        const wrongOwner = await start(dataDir(), port);
        expect(wrongOwner.result.error).toMatch(
          new RegExp(
            `^The Postgres data directory ${clusterDir} is not usable by the user the server runs as \\(\`postgres\`\\): it must be owned by that user with mode 700 \\(chown -R postgres ${clusterDir}\\)`,
          ),
        );
        await wrongOwner.stop();
        // Closed to the server's user: refused before the server is started.
        chmodSync(clusterDir, 0o700);
        const closed = await start(dataDir(), port);
        expect(closed.result.error).toMatch(
          new RegExp(
            `^${clusterDir} holds a Postgres cluster that the user \`postgres\` the server runs as cannot enter .*chown -R postgres ${clusterDir}`,
          ),
        );
        await closed.stop();
      } finally {
        spawnSync('chown', ['-R', `${user.uid}:${user.gid}`, clusterDir]);
        chmodSync(clusterDir, 0o700);
      }
      const repaired = await start(dataDir(), port);
      expect(repaired.result.error).toBeUndefined();
      await repaired.stop();
    },
  );
});
