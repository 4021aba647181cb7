import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError } from 'commander';
import { AppError } from '../lib/errors';
import { RunOptions as RunOptionsSchema } from './migration-runs.schemas';
import * as runs from './migration-runs.service';

/**
 * The fleet migration commands of `tenantry` (tenants:list, tenants:migrate, tenants:runs, tenants:run,
 * tenants:pause|resume|stop). They go through the same service as the API; a run is driven by the workers, so
 * the command only creates or steers it and follows it in the master DB: killing the command stops nothing,
 * and `tenants:run <id>` attaches again.
 *
 * Exit codes of the commands that follow a run (tenants:migrate without --no-wait, tenants:run):
 *   0  every store of the run reached the target version (migrated or already there)
 *   1  the command could not do its work (bad option, unknown run, another run active, no master DB)
 *   2  the run ended with failed stores (state failed — a canary, maxFailures — or completed with failures)
 *   3  the run was stopped or is paused: stores are left pending
 */
export const ExitCode = { ok: 0, error: 1, failures: 2, unfinished: 3 } as const;

/** Opens what the commands need (the master DB, the queues) for the length of `run`. */
export type WithFleet = <T>(run: (deps: runs.FleetDeps) => Promise<T>) => Promise<T>;

const POLL_MS = 500;
const PRINT_EVERY_MS = 5000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const integer = (name: string) => (value: string) => {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be a whole number`);
  return Number(value);
};
const ids = (value: string) =>
  value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** An API refusal as a terminal line: its detail and each field's problem. */
function told(err: unknown): never {
  if (err instanceof AppError && err.extra.errors?.length) {
    throw new Error(`${err.message}: ${err.extra.errors.map((e) => `${e.path} ${e.message}`).join('; ')}`);
  }
  throw err;
}

function table(rows: Record<string, unknown>[], columns: string[]): void {
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  console.log(line(columns));
  for (const r of rows) console.log(line(columns.map((c) => cell(r[c]))));
}

/** The exit code a run's end means (see ExitCode). */
function exitCodeOf(run: { state: string; failed: number; pending: number }): number {
  if (run.state === 'completed' && run.failed === 0 && run.pending === 0) return ExitCode.ok;
  if (run.state === 'failed' || run.failed > 0) return ExitCode.failures;
  return ExitCode.unfinished;
}

/**
 * Follow a run until it ends or is paused: a bar per tenant server (done/total, ETA), failures printed as they
 * happen, a summary at the end. Returns the exit code.
 */
export async function followRun(deps: runs.FleetDeps, runId: string): Promise<number> {
  const tty = process.stdout.isTTY === true;
  const bars = new cliProgress.MultiBar(
    {
      format: ' {server} [{bar}] {value}/{total} | ETA {eta_formatted} | running {running} | failed {failed}',
      hideCursor: true,
      // Room in 80 columns for the counts after the bar (cli-progress cuts a line at the terminal's width).
      barsize: 20,
      clearOnComplete: false,
      etaBuffer: 50,
      autopadding: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const byServer = new Map<string, cliProgress.SingleBar>();
  // Above the bars once they are drawn (printed with their next redraw), plainly before.
  const say = (line: string) => (tty && byServer.size ? bars.log(`${line}\n`) : console.log(line));
  let seen = new Date(0);
  let [lastDone, printedAt] = [0, Date.now()];
  let details = await runs.runDetails(deps, runId);
  say(`Run ${runId}: target version ${details.targetVersion}, ${details.total} stores, ${details.state}`);
  for (;;) {
    for (const s of details.servers) {
      const payload = { server: s.server.padEnd(15), running: s.running, failed: s.failed };
      const bar = byServer.get(s.server);
      if (bar) bar.update(s.done, payload);
      else if (tty) byServer.set(s.server, bars.create(s.total, s.done, payload));
    }
    const done = details.total - details.pending;
    if (!tty && done !== lastDone && Date.now() - printedAt >= PRINT_EVERY_MS) {
      // Without a terminal (a log, a CI job): a line now and then instead of the bars.
      console.log(`  ${done}/${details.total} stores done, ${details.running} migrating, ${details.failed} failed`);
      [lastDone, printedAt] = [done, Date.now()];
    }
    for (const f of await runs.failuresSince(deps, runId, seen)) {
      say(`  failed: store ${f.storeId} on ${f.server}: ${f.error}`);
      seen = new Date(f.finishedAt);
    }
    const ended = runs.FINAL_STATES.includes(details.state) || details.state === 'paused';
    if (ended && details.running === 0) break;
    await sleep(POLL_MS);
    details = await runs.runDetails(deps, runId);
  }
  // A last redraw: lines logged since the previous one are printed by it (stop() would drop them).
  if (tty && byServer.size) bars.update();
  bars.stop();
  const why = details.reason ? ` (${details.reason})` : '';
  console.log(
    `Run ${runId} ${details.state}${why}: ${details.migrated} migrated, ${details.skipped} skipped, ${details.failed} failed, ${details.pending} pending.`,
  );
  if (details.state === 'paused') console.log(`Resume it with: tenantry tenants:resume ${runId}`);
  return exitCodeOf(details);
}

export function registerFleetCommands(program: Command, withFleet: WithFleet, operator: () => string): void {
  const actor = (): runs.Actor => ({ userId: null, label: operator() });
  const exit = (code: number) => {
    process.exitCode = code;
  };

  program
    .command('tenants:list')
    .description("every store with its database's server, schema version and last migration error")
    .action(() =>
      withFleet(async (deps) => {
        const target = runs.fleetTargetVersion(deps.config);
        const stores = await runs.fleetStores(deps);
        console.log(`Tenant migrations of this code: version ${target}.`);
        table(stores, ['storeId', 'slug', 'status', 'server', 'dbStatus', 'schemaVersion', 'migrationError']);
      }),
    );

  program
    .command('tenants:migrate')
    .description('start a fleet migration run and follow it (the run goes on if this command is stopped)')
    .option(
      '--canary <n|ids>',
      'migrate these first (a number, or comma-separated store ids); a canary failing fails the run',
    )
    .option('--per-server <n>', 'stores migrated at once per tenant server (default 4)', integer('--per-server'))
    .option('--max-failures <n>', 'stop the run once more stores than this have failed', integer('--max-failures'))
    .option('--stores <ids>', 'only these stores (comma-separated ids)', ids)
    .option('--dry-run', 'list what would be applied to which store; change nothing')
    .option('--no-wait', 'start the run and return (follow it with tenants:run <id>)')
    .action(
      (opts: {
        canary?: string;
        perServer?: number;
        maxFailures?: number;
        stores?: string[];
        dryRun?: boolean;
        wait: boolean;
      }) =>
        withFleet(async (deps) => {
          const parsed = RunOptionsSchema.safeParse({
            canary:
              opts.canary === undefined
                ? undefined
                : /^\d+$/.test(opts.canary)
                  ? Number(opts.canary)
                  : ids(opts.canary),
            perServer: opts.perServer,
            maxFailures: opts.maxFailures,
            stores: opts.stores,
          });
          if (!parsed.success)
            throw new Error(parsed.error.issues.map((i) => `--${String(i.path[0])}: ${i.message}`).join('; '));
          const options = parsed.data;
          if (opts.dryRun) {
            const plan = await runs.dryRun(deps, options).catch(told);
            console.log(
              `Dry run: target version ${plan.targetVersion}; ${plan.toMigrate} of ${plan.total} stores to migrate, ${plan.skipped} already there; ` +
                `${plan.perServer} per server${plan.maxFailures === null ? '' : `, stop after ${plan.maxFailures} failures`}. Nothing was changed.`,
            );
            for (const s of plan.stores) {
              console.log(
                `  ${s.storeId}  ${s.server}  ${s.fromVersion} -> ${s.toVersion}  ${s.migrations.join(', ')}${s.canary ? '  (canary)' : ''}`,
              );
            }
            return;
          }
          const { runId } = await runs.createRun(deps, actor(), options).catch(told);
          console.log(`Run ${runId} started. Follow it with: tenantry tenants:run ${runId}`);
          if (opts.wait) exit(await followRun(deps, runId));
        }),
    );

  program
    .command('tenants:runs')
    .description('the latest fleet migration runs')
    .action(() =>
      withFleet(async (deps) => {
        const rows = await runs.listRuns(deps);
        table(
          rows.map((r) => ({ ...r, createdAt: new Date(r.createdAt).toISOString() })),
          [
            'id',
            'state',
            'targetVersion',
            'total',
            'migrated',
            'skipped',
            'failed',
            'pending',
            'requestedBy',
            'createdAt',
          ],
        );
      }),
    );

  program
    .command('tenants:run')
    .description('follow a run (again): progress per server, failures, and its exit code')
    .argument('<id>', 'the run id')
    .action((id: string) => withFleet(async (deps) => exit(await followRun(deps, id))));

  for (const action of ['pause', 'resume', 'stop'] as const) {
    program
      .command(`tenants:${action}`)
      .description(
        {
          pause: 'pause a run (stores being migrated finish; no other starts)',
          resume: 'resume a paused run',
          stop: 'stop a run for good (stores not started stay pending)',
        }[action],
      )
      .argument('<id>', 'the run id')
      .action((id: string) =>
        withFleet(async (deps) => {
          const run = await runs.changeRun(deps, actor(), id, action);
          console.log(`Run ${id} is ${run.state}.`);
        }),
      );
  }
}
