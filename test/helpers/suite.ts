import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import type { Server } from 'node:http';
import type { Express } from 'express';
import pg from 'pg';
import type { AppContext } from '../../src/app-context';
import { startTestApp, type TestApp } from './app';
import { startDnsServer, type TestDnsServer } from './dns-server';
import { startInstance } from './fixtures';
import { startPasswordServer, type PasswordServer } from './password-server';
import { startTcpProxy, type TcpProxy } from './tcp-proxy';
import { dropTestTenants } from './tenants';
import { Resources } from './teardown';

/**
 * One set-up and one tear-down per suite. Everything a suite opens goes through it and is closed in
 * afterAll, newest first, even when a beforeAll or a test threw: each close bounded in time, a failing
 * one reported after the others have run. Jest then never waits on a handle a failure left open.
 */

/** Jest's hook timeouts: starting an app on a busy machine, and every close in turn. */
const SET_UP_WITHIN_MS = 120_000;
const TEAR_DOWN_WITHIN_MS = 300_000;
/** How long a process gets to stop after SIGTERM before it is killed. */
const STOP_WITHIN_MS = 5000;

export interface Instance {
  ctx: AppContext;
  app: Express;
}

export interface SuiteResources {
  /** Close `close` at tear-down, before whatever was opened earlier. */
  defer(name: string, close: () => unknown): void;
  /** Start something and close it at tear-down (also when the start outlives its hook's timeout). */
  open<T>(name: string, start: () => Promise<T>, close: (value: T) => unknown): Promise<T>;
  /** A DNS server on loopback (see dns-server.ts). */
  dns(): Promise<TestDnsServer>;
  /** A TCP proxy from 127.0.0.1:`port` to `target` (see tcp-proxy.ts). */
  proxy(port: number, target: { host: string; port: number }): Promise<TcpProxy>;
  /** A Postgres server that checks passwords, in a child process (see password-server.ts). */
  passwordServer(password: string): Promise<PasswordServer>;
  /** A connected pg client; its errors (a terminated backend) are left to the test to observe. */
  pgClient(config: pg.ClientConfig): Promise<pg.Client>;
  /** child_process.spawn, the child stopped (SIGTERM, then SIGKILL) at tear-down if still running. */
  spawn(command: string, args: readonly string[], options?: SpawnOptions): ChildProcess;
  /**
   * An assertion for the end of the suite, run once everything is closed (so a failing one leaves
   * nothing open); skipped when no test ran, as after a failed set-up (that error is the one to read).
   */
  checkAtEnd(check: () => unknown): void;
}

export interface Suite extends TestApp, SuiteResources {
  /** Another API instance on the suite's master DB and Redis (see startInstance in fixtures.ts). */
  instance(env?: Record<string, string>, opts?: { redisPrefix?: string }): Promise<Instance>;
  /** The app listening on a free port of 127.0.0.1 (for clients that need a real socket). */
  listen(): Server;
}

type Env = Record<string, string>;

function resources(r: Resources, checks: (() => unknown)[]): SuiteResources {
  return {
    defer: (name, close) => r.defer(name, close),
    open: (name, start, close) => r.open(name, start, close),
    dns: () => r.open('the DNS server', startDnsServer, (dns) => dns.close()),
    proxy: (port, target) =>
      r.open(
        `the TCP proxy on port ${port}`,
        () => startTcpProxy(port, target),
        (proxy) => proxy.close(),
      ),
    passwordServer: (password) =>
      r.open(
        'the password-checking Postgres',
        () => startPasswordServer(password),
        (server) => server.stop(),
      ),
    pgClient: (config) =>
      r.open(
        'a Postgres client',
        async () => {
          const client = new pg.Client({ connectionTimeoutMillis: 5000, ...config });
          client.on('error', () => {});
          await client.connect();
          return client;
        },
        (client) => client.end(),
      ),
    spawn(command, args, options = {}) {
      const child = spawn(command, args, options);
      const exited = new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.once('error', () => child.pid === undefined && resolve());
      });
      r.defer(`the process ${command} ${args.join(' ')}`.slice(0, 120), async () => {
        if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), STOP_WITHIN_MS);
          await exited;
          clearTimeout(timer);
        }
        // A grandchild still holding the pipes would keep jest alive.
        for (const stream of [child.stdin, child.stdout, child.stderr]) stream?.destroy();
      });
      return child;
    },
    checkAtEnd: (check) => void checks.push(check),
  };
}

/** Registers the hooks: close everything, then run the end-of-suite checks if a test ran; every failure is reported, none hides another. */
function registerTearDown(r: Resources, checks: (() => unknown)[]): void {
  let testsRan = false;
  // Jest runs no beforeEach for a test whose beforeAll failed.
  beforeEach(() => {
    testsRan = true;
  });
  afterAll(() => tearDown(r, checks, testsRan), TEAR_DOWN_WITHIN_MS);
}

async function tearDown(r: Resources, checks: (() => unknown)[], runChecks: boolean): Promise<void> {
  const errors: unknown[] = [];
  await r.closeAll().catch((err) => errors.push(err));
  if (runChecks) {
    for (const check of checks) {
      try {
        await check();
      } catch (err) {
        errors.push(err);
      }
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1)
    throw new AggregateError(errors, errors.map((e) => (e instanceof Error ? e.message : String(e))).join('\n\n'));
}

/**
 * For a suite without an app of its own (child processes, servers): what it opens through the returned
 * object is closed in afterAll. Call it at the top of the file or of a describe block.
 */
export function useResources(): SuiteResources {
  const r = new Resources();
  const checks: (() => unknown)[] = [];
  registerTearDown(r, checks);
  return resources(r, checks);
}

/**
 * A suite's app (startTestApp with `env`, or with what `env(s)` returns once it has opened what the app
 * needs, e.g. a DNS server), started in beforeAll and closed in afterAll with everything else the suite
 * opened through the returned object, and the tenant databases it made (tenants.ts). Call it at the top
 * of the file or of a describe block, before the suite's own hooks: its beforeAll runs first and its
 * afterAll too, so an afterAll declared after it asserts on a closed suite.
 */
export function useSuite(label: string, env: Env | ((s: SuiteResources) => Env | Promise<Env>) = {}): Suite {
  const r = new Resources();
  const checks: (() => unknown)[] = [];
  const s = resources(r, checks);
  let started: TestApp | undefined;
  let failure: unknown;

  beforeAll(async () => {
    // Registered first, so closed last: once nothing holds a connection to them.
    r.defer('the test tenant databases', dropTestTenants);
    try {
      const settings = typeof env === 'function' ? await env(s) : env;
      started = await r.open(
        'the app',
        () => startTestApp(label, settings),
        (t) => t.close(),
      );
    } catch (err) {
      failure = err;
      throw err;
    }
  }, SET_UP_WITHIN_MS);
  registerTearDown(r, checks);

  const app = (): TestApp => {
    if (started) return started;
    const why =
      failure === undefined
        ? 'it has not started (yet)'
        : `its set-up failed: ${failure instanceof Error ? failure.message : String(failure)}`;
    throw new Error(`the "${label}" suite has no app: ${why}`);
  };
  return {
    ...s,
    get ctx() {
      return app().ctx;
    },
    get app() {
      return app().app;
    },
    get db() {
      return app().db;
    },
    close: () => r.closeAll(),
    instance: (instanceEnv, opts) =>
      r.open(
        'another instance',
        async () => {
          const instance = await startInstance(app(), instanceEnv, opts);
          // Tests may close an instance themselves; tear-down then has nothing left to do.
          const close = instance.ctx.close.bind(instance.ctx);
          let closing: Promise<void> | undefined;
          instance.ctx.close = () => (closing ??= close());
          return instance;
        },
        (instance) => instance.ctx.close(),
      ),
    listen() {
      const server = app().app.listen(0, '127.0.0.1');
      r.defer('the HTTP server', () => {
        server.closeAllConnections();
        return new Promise<void>((resolve) => server.close(() => resolve()));
      });
      return server;
    },
  };
}
