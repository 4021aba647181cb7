// Runs the embedded master Postgres of src/db/embedded.ts in a child process, as the API and the command
// line run it: a server outside jest's process, stopped whatever happens to the test. Run by
// embedded-server.ts:
//   node --import tsx test/helpers/embedded-child.ts start <dataDir> <port> <legacyPassword>
//       starts it as the API does; prints {"url", "pid", "databaseDir"} once it is up, or {"error"}
//   node --import tsx test/helpers/embedded-child.ts reuse <dataDir> <port> <legacyPassword>
//       as the command line does: the server already running on the port, else a new one
//   node --import tsx test/helpers/embedded-child.ts legacy-init <dataDir> <port> <password>
//       creates DATA_DIR/pg as versions before the secret file did: the password given, no secret file
// Stops the server and exits when its stdin closes.
import path from 'node:path';
import { startEmbeddedPostgres, type EmbeddedServer } from '../../src/db/embedded';
import { initCluster, runnableBinaries, serverUser } from '../../src/db/local-postgres';

const [mode, dataDir, portArg, password] = process.argv.slice(2);
const port = Number(portArg);
let server: EmbeddedServer | undefined;

const say = (message: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(message)}\n`);
process.stdin.on('end', () => {
  void (server?.stop() ?? Promise.resolve()).finally(() => process.exit(0));
});
process.stdin.resume();

async function legacyInit(): Promise<void> {
  const user = serverUser();
  await initCluster(runnableBinaries(user), path.join(dataDir, 'pg'), password, user);
}

async function main(): Promise<void> {
  try {
    if (mode === 'legacy-init') {
      await legacyInit();
      say({ done: true });
    } else {
      server = await startEmbeddedPostgres(dataDir, port, { legacyPassword: password, reuseRunning: mode === 'reuse' });
      say({ url: server.url, pid: server.pid, databaseDir: server.databaseDir });
    }
  } catch (err) {
    say({ error: (err as Error).message });
  }
}

void main();
