// A throw-away Postgres server that checks passwords (scram-sha-256), for tests of rejected credentials:
// the test servers trust local connections. Run as a child process by password-server.ts (jest's runtime
// is no place for a server that must outlive a failed test's module registry):
//   node --import tsx test/helpers/password-postgres.ts <port> <password> [<setting>=<value>,…]
// (the optional settings go to postgresql.auto.conf before the start, e.g. max_connections=12).
// Prints "ready" once it accepts connections; stops and deletes its data on SIGTERM, SIGINT or when its
// stdin closes (the parent went away). Run as root, it works from a checkout the `postgres` user cannot
// enter, as the embedded master does (src/db/local-postgres.ts).
import { appendFileSync, chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  initCluster,
  runnableBinaries,
  serverUser,
  startServer,
  type RunningPostgres,
} from '../../src/db/local-postgres';

const [port, password, settings] = [Number(process.argv[2]), process.argv[3], process.argv[4] ?? ''];
const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-test-pg-'));
// Under the temp folder, enterable by the `postgres` user the server runs as when this runs as root.
chmodSync(dir, 0o755);
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

let server: RunningPostgres | undefined;
let stopping: Promise<void> | undefined;
function stop(code = 0): Promise<void> {
  stopping ??= (server?.stop() ?? Promise.resolve()).catch(() => {}).finally(() => process.exit(code));
  return stopping;
}
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();

async function main(): Promise<void> {
  try {
    const user = serverUser();
    const bin = runnableBinaries(user);
    const data = path.join(dir, 'data');
    await initCluster(bin, data, password, user);
    for (const setting of settings.split(',').filter(Boolean))
      appendFileSync(path.join(data, 'postgresql.auto.conf'), `${setting}\n`);
    server = await startServer(bin, data, port, user);
    process.stdout.write('ready\n');
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    await stop(1);
  }
}

void main();
