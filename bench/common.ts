/** What every benchmark section shares: the Postgres it works on, the bench server, ids, and the report. */
import { fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { TenantConnection } from '../src/db/tenant-handle';
import { withClient } from '../src/db/pg-client';

export const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export const admin = (sql: string, values?: unknown[]) => withClient(ADMIN_URL, (c) => c.query(sql, values));

/** The URL of one database on the bench server. */
export function databaseUrl(database: string): string {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

/** How a bench store's tenant database is reached (all bench stores of a section share one role). */
export function benchConnection(database: string, role: { user: string; password: string }): TenantConnection {
  const u = new URL(ADMIN_URL);
  return { host: u.hostname, port: Number(u.port || 5432), database, ...role };
}

/** A UUID that is the same on every run for (seed, i), so re-runs find what earlier runs made. */
export function stableUuid(seed: string, i: number): string {
  const h = createHash('sha1').update(`${seed}-${i}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** bench/server.ts (the app plus the baselines) in a child process; resolves once it listens. */
export function startServer(env: Record<string, string>): Promise<ChildProcess> {
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const child = fork(path.join(__dirname, 'server.ts'), [], {
    execArgv: ['--import', 'tsx', ...profile],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    child.once('message', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`bench server exited with ${code}`)));
  });
}

export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
}

/** A Markdown table, its columns padded to line up in a terminal. */
export function printTable(head: string[], rows: (string | number)[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells: (string | number)[]) =>
    '| ' + cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ') + ' |';
  console.log(line(head));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows) console.log(line(r));
}

/** The figures every scenario reports from one autocannon run. */
export interface Summary {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
}

export function summarize(
  name: string,
  r: {
    requests: { average: number };
    latency: { p50: number; p99: number };
    errors: number;
    timeouts: number;
    non2xx: number;
  },
): Summary {
  return {
    name,
    rps: Math.round(r.requests.average),
    p50: r.latency.p50,
    p99: r.latency.p99,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
  };
}

/**
 * CPU seconds used so far by the processes named `postgres` (the live ones, plus the backends that have
 * ended, which the postmaster has reaped), `redis-server`, and the given Node processes: read from
 * /proc (Linux), to show where a run's CPU went. Undefined figures where /proc is not there.
 */
export function cpuSeconds(nodePids: number[]): { postgres: number; redis: number; node: number } | undefined {
  if (!existsSync('/proc/self/stat')) return undefined;
  const tick = 100; // USER_HZ on Linux
  const stat = (pid: string) => {
    try {
      const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      // fields after comm: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
      return {
        comm,
        ppid: Number(f[1]),
        own: (Number(f[11]) + Number(f[12])) / tick,
        children: (Number(f[13]) + Number(f[14])) / tick,
      };
    } catch {
      return undefined;
    }
  };
  const all = new Map<number, NonNullable<ReturnType<typeof stat>>>();
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    const s = stat(pid);
    if (s) all.set(Number(pid), s);
  }
  let postgres = 0;
  let redis = 0;
  for (const s of all.values()) {
    if (s.comm === 'postgres') postgres += s.own + (all.get(s.ppid)?.comm === 'postgres' ? 0 : s.children);
    if (s.comm === 'redis-server') redis += s.own;
  }
  const node = nodePids.reduce((sum, pid) => sum + (all.get(pid)?.own ?? 0), 0);
  return { postgres, redis, node };
}
