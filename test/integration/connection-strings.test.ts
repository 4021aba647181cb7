import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { QueueName } from '../../src/queue/queues';
import { registerUser } from '../helpers/app';
import { adminQuery, assertTestDatabase, urlFor } from '../helpers/db';
import { countRows } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import type { PasswordServer } from '../helpers/password-server';
import { auth, createStoreViaApi, queryWith } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * An owner's connection string is data. Whatever it says, the platform reads no file, opens no socket path
 * and sends no option because of it: anything beyond user, password, host, port, database and sslmode is
 * refused with 400 before anything is stored or queued.
 */
let starting: Promise<PasswordServer>;
const t = useSuite('connstr', (s) => {
  // Started beside the app rather than after it.
  starting = s.passwordServer(`right-${randomBytes(9).toString('base64url')}`);
  return {};
});
let api: RecordingClient;
/** A server that checks passwords (the test servers trust every local connection). */
let checking: PasswordServer;
let tlsServer: FakeTlsPostgres;
const hex = randomBytes(4).toString('hex');
const role = `tenantry_test_cs_role_${hex}`;
/** A database holding a table: a string that gets as far as the connection check is answered DATABASE_NOT_EMPTY. */
const used = `tenantry_test_cs_used_${hex}`;
const PASSWORD = `pw-${randomBytes(9).toString('base64url')}`;
const SPECIAL_PASSWORD = `p@ss:w/rd?#%&é+ "'\\${randomBytes(3).toString('hex')}`;
const special = { role: 'special_owner', database: 'special_db' };
let tmp: string;

let owner: Awaited<ReturnType<typeof registerUser>>;
let storeId: string;

beforeAll(async () => {
  checking = await starting;
  api = recordingClient(t.app);
  tmp = mkdtempSync(path.join(tmpdir(), 'tenantry-connstr-'));
  t.defer('the temporary folder', () => rmSync(tmp, { recursive: true, force: true }));
  tlsServer = await t.open(
    'the fake TLS Postgres',
    () => startFakeTlsPostgres(tmp),
    (server) => server.close(),
  );
  for (const n of [role, used]) assertTestDatabase(n);
  t.defer('the role and database made here', async () => {
    await adminQuery(`DROP DATABASE IF EXISTS ${used} WITH (FORCE)`);
    await adminQuery(`DROP ROLE IF EXISTS ${role}`);
  });
  await adminQuery(`CREATE ROLE ${role} LOGIN PASSWORD '${PASSWORD}'`);
  await adminQuery(`CREATE DATABASE ${used} OWNER ${role}`);
  await queryWith({ connectionString: urlFor(used) }, 'CREATE TABLE legacy_orders (id integer PRIMARY KEY)');
  // On the password-checking server: a role whose password has every character a URL gives meaning to.
  const admin = { host: checking.host, port: checking.port, user: checking.user, password: checking.password };
  await queryWith(
    { ...admin, database: 'postgres' },
    `CREATE ROLE ${special.role} LOGIN PASSWORD '${SPECIAL_PASSWORD.replace(/'/g, "''")}'`,
  );
  await queryWith({ ...admin, database: 'postgres' }, `CREATE DATABASE ${special.database}`);
  await queryWith({ ...admin, database: special.database }, 'CREATE TABLE legacy (id integer)');

  owner = await registerUser(t.app);
  storeId = (await createStoreViaApi(t.app, owner.token, { name: 'Connection strings' })).id;
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const connect = (body: object, id = storeId, token = owner.token) =>
  api.post(`/api/stores/${id}/database`).set(auth(token)).send(body);
const withString = (connectionString: string) => ({ mode: 'external', connectionString });
const base = `postgres://${role}:${PASSWORD}@127.0.0.1:5432/${used}`;

/** Nothing was stored or queued for the store, and it still waits for a database. */
async function expectNothingStored(id = storeId) {
  expect(await t.ctx.master.models.StoreDatabase.findByPk(id)).toBeNull();
  expect((await t.ctx.master.models.Store.findByPk(id, { rejectOnEmpty: true })).status).toBe('pending_database');
  expect(await t.ctx.queues.get(QueueName.provisioning).getJob(`provision-${id}`)).toBeUndefined();
  expect(await countRows(t, 'audit_log', "store_id = :id AND action = 'store.database.connected'", { id })).toBe(0);
}

describe('a connection string that says more than where to connect → 400 VALIDATION_FAILED, and nothing is stored or queued', () => {
  test.each([
    ['a CA file to read', `${base}?sslrootcert=/etc/passwd`],
    ['a client certificate to read', `${base}?sslcert=/etc/ssl/certs/ca-certificates.crt`],
    ['a client key to read', `${base}?sslkey=/etc/ssl/private/ssl-cert-snakeoil.key`],
    ['a socket directory', `${base}?host=/var/run/postgresql`],
    ['server options', `${base}?options=-c%20statement_timeout%3D0`],
    ['an application name', `${base}?application_name=x`],
    ['sslmode=prefer', `${base}?sslmode=prefer`],
    ['sslmode twice', `${base}?sslmode=require&sslmode=disable`],
    ['no host (a Unix socket)', `postgres://${role}:${PASSWORD}@/${used}`],
    ['a socket path as host, percent-encoded', `postgres://${role}:${PASSWORD}@%2Fvar%2Frun%2Fpostgresql/${used}`],
    ['a raw newline', `${base}\n`],
    ['a raw NUL', `postgres://${role}:${PASSWORD}\u0000@127.0.0.1:5432/${used}`],
    ['%00 in the password', `postgres://${role}:${PASSWORD}%00@127.0.0.1:5432/${used}`],
    ['%0a in the database', `postgres://${role}:${PASSWORD}@127.0.0.1:5432/${used}%0a`],
    ['a fragment', `${base}#section`],
    ['the scheme alone', 'postgres://'],
    ['not a URL', 'not a url'],
    ['another scheme', `mysql://${role}:${PASSWORD}@127.0.0.1:3306/${used}`],
    ['a path of two segments', `${base}/more`],
    ['an IPv4 address in decimal', `postgres://${role}:${PASSWORD}@2130706433:5432/${used}`],
  ])('%s', async (_what, connectionString) => {
    const res = await connect(withString(connectionString));
    expectValidationErrors(res, ['connectionString']);
    expect(res.text).not.toContain(PASSWORD);
    await expectNothingStored();
  });

  test('the host/port form: control characters in any field → 400 naming the field', async () => {
    const form = { mode: 'external', host: '127.0.0.1', port: 5432, database: used, user: role, password: PASSWORD };
    for (const [field, value] of [
      ['host', '127.0.0.1\n'],
      ['host', 'db\u0000.example'],
      ['database', `${used}\n`],
      ['user', `${role}\u0000`],
      ['password', `${PASSWORD}\r\n`],
      ['host', '/var/run/postgresql'],
      ['host', '0x7f000001'],
    ] as const) {
      expectValidationErrors(await connect({ ...form, [field]: value }), [field]);
    }
    await expectNothingStored();
  });
});

test('a FIFO named as a certificate is never opened: the answer is 400 at once, for every store', async () => {
  const fifo = path.join(tmp, 'hang.pem');
  execFileSync('mkfifo', [fifo]);
  // Opens the FIFO for writing after a while (blocking until someone reads it), then exits. Code that
  // opened it for reading would hang until then; while nobody does, this process keeps waiting.
  const writer = spawn(process.execPath, [
    '-e',
    "setTimeout(() => { console.log('opening'); require('fs').closeSync(require('fs').openSync(process.argv[1], 'w')); }, 1500)",
    fifo,
  ]);
  try {
    for (const param of ['sslrootcert', 'sslcert', 'sslkey']) {
      const started = Date.now();
      const res = await connect(withString(`${base}?${param}=${encodeURIComponent(fifo)}`));
      expect(Date.now() - started).toBeLessThan(1000);
      expectValidationErrors(res, ['connectionString']);
    }
    await expectNothingStored();
    // The writer got to its open and still waits in it: no reader ever opened the FIFO.
    await waitForOutput(writer, 'opening', 10000);
    await new Promise((r) => setTimeout(r, 300));
    expect(writer.exitCode).toBeNull();
  } finally {
    await stopChild(writer);
  }
});

test("an empty password stays empty: it is never filled in from the server's PGPASSWORD or ~/.pgpass (422)", async () => {
  const passfile = path.join(tmp, 'pgpass');
  writeFileSync(passfile, `*:*:*:*:${checking.password}\n`, { mode: 0o600 });
  const saved = { PGPASSFILE: process.env.PGPASSFILE, PGPASSWORD: process.env.PGPASSWORD };
  const bodies = [
    withString(`postgres://${checking.user}@${checking.host}:${checking.port}/postgres`),
    {
      mode: 'external',
      host: checking.host,
      port: checking.port,
      database: 'postgres',
      user: checking.user,
      password: '',
    },
  ];
  try {
    for (const env of [{ PGPASSFILE: passfile }, { PGPASSWORD: checking.password }]) {
      delete process.env.PGPASSFILE;
      delete process.env.PGPASSWORD;
      Object.assign(process.env, env);
      for (const body of bodies) {
        const res = await connect(body);
        expect({ status: res.status, code: res.body.code }).toEqual({
          status: 422,
          code: expect.stringMatching(/^DATABASE_(AUTH_FAILED|UNREACHABLE)$/),
        });
        expect(res.text).not.toContain(checking.password);
      }
    }
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
  await expectNothingStored();
});

describe('good connection strings are accepted and used as written (they reach the database check)', () => {
  test.each([
    ['with a port', base],
    ['without a port', `postgres://${role}:${PASSWORD}@127.0.0.1/${used}`],
    ['postgresql://', `postgresql://${role}:${PASSWORD}@127.0.0.1:5432/${used}`],
    ['sslmode=disable', `${base}?sslmode=disable`],
    ['a host name', `postgres://${role}:${PASSWORD}@localhost:5432/${used}`],
    ['a percent-encoded database name', `postgres://${role}:${PASSWORD}@127.0.0.1:5432/${encodeURIComponent(used)}`],
  ])('%s', async (_what, connectionString) => {
    // This database holds a table: DATABASE_NOT_EMPTY says the string was read and the database reached.
    expectProblem(await connect(withString(connectionString)), 422, 'DATABASE_NOT_EMPTY');
    await expectNothingStored();
  });

  test('a percent-encoded password with special characters is decoded exactly: the server that checks it lets it in', async () => {
    const at = `${checking.host}:${checking.port}/${special.database}`;
    expectProblem(
      await connect(withString(`postgres://${special.role}:${encodeURIComponent(SPECIAL_PASSWORD)}@${at}`)),
      422,
      'DATABASE_NOT_EMPTY',
    );
    // One character off is refused, so it was the password that let it in.
    expectProblem(
      await connect(
        withString(`postgres://${special.role}:${encodeURIComponent(SPECIAL_PASSWORD.slice(0, -1))}@${at}`),
      ),
      422,
      'DATABASE_AUTH_FAILED',
    );
    await expectNothingStored();
  });
});

describe('sslmode decides the TLS of the connection', () => {
  // The stand-in server speaks TLS with a self-signed certificate and then refuses every login.
  const at = () => `postgres://owner:secret@127.0.0.1:${tlsServer.port}/shop`;

  test('disable (and no sslmode): no TLS', async () => {
    for (const s of [`${at()}?sslmode=disable`, at()]) {
      const before = tlsServer.seen.plain;
      expectProblem(await connect(withString(s)), 422, 'DATABASE_AUTH_FAILED');
      expect(tlsServer.seen.plain).toBe(before + 1);
    }
  });

  test('require: TLS without checking the certificate', async () => {
    const before = tlsServer.seen.tls;
    expectProblem(await connect(withString(`${at()}?sslmode=require`)), 422, 'DATABASE_AUTH_FAILED');
    expect(tlsServer.seen.tls).toBe(before + 1);
  });

  test('verify-full (and ssl: true in the host/port form): an untrusted certificate is refused', async () => {
    const before = tlsServer.seen.tls;
    expectProblem(await connect(withString(`${at()}?sslmode=verify-full`)), 422, 'DATABASE_UNREACHABLE');
    expectProblem(
      await connect({
        mode: 'external',
        host: '127.0.0.1',
        port: tlsServer.port,
        database: 'shop',
        user: 'owner',
        password: 'secret',
        ssl: true,
      }),
      422,
      'DATABASE_UNREACHABLE',
    );
    expect(tlsServer.seen.tls).toBe(before);
    await expectNothingStored();
  });
});

function waitForOutput(child: ChildProcess, text: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`no "${text}" from the child in ${timeoutMs} ms: ${out}`)),
      timeoutMs,
    );
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

interface FakeTlsPostgres {
  port: number;
  /** Logins that arrived in clear text, and over a completed TLS handshake. */
  seen: { plain: number; tls: number };
  close(): Promise<void>;
}

/** SSLRequest: length 8, code 80877103. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);

/** An ErrorResponse refusing the login with SQLSTATE 28P01, as a real server does for a wrong password. */
function authFailed(): Buffer {
  const fields = Buffer.from('SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0');
  const head = Buffer.alloc(5);
  head.write('E');
  head.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([head, fields]);
}

/**
 * A stand-in Postgres server on 127.0.0.1: answers an SSLRequest with "yes" and a self-signed certificate,
 * and refuses every login. Enough to see whether a client used TLS and whether it checked the certificate.
 */
async function startFakeTlsPostgres(dir: string): Promise<FakeTlsPostgres> {
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
    ],
    { stdio: 'ignore' },
  );
  const context = { key: readFileSync(keyFile), cert: readFileSync(certFile) };
  const seen = { plain: 0, tls: 0 };
  const sockets = new Set<net.Socket>();
  const refuseLogin = (socket: net.Socket, kind: 'plain' | 'tls') =>
    socket.once('data', () => {
      seen[kind]++;
      socket.end(authFailed());
    });
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.once('data', (first) => {
      if (!first.subarray(0, 8).equals(SSL_REQUEST)) {
        seen.plain++;
        socket.end(authFailed());
        return;
      }
      socket.write('S');
      const secure = new tls.TLSSocket(socket, { isServer: true, ...context });
      secure.on('error', () => socket.destroy());
      secure.once('secure', () => refuseLogin(secure, 'tls'));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
