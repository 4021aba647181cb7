import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError } from 'commander';
import { AppError } from '../lib/errors';
import * as moves from './moves.service';

/**
 * `tenantry tenants:move <store> <server>` and `tenantry tenants:drain <server>`: created through the same
 * service as the admin API, run by the workers, followed here from the master DB. Killing the command stops
 * nothing; giving it again attaches to the move or drain under way.
 *
 * Exit codes: 0 the store (every store of the drain) is on its new server; 1 the command could not do its work
 * (a refusal: unknown store or server, not movable, no master DB); 2 the move (a move of the drain) failed.
 */
export const ExitCode = { ok: 0, error: 1, failed: 2 } as const;

export type WithMoves = <T>(run: (deps: moves.MoveDeps) => Promise<T>) => Promise<T>;

const POLL_MS = 300;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A move's states in order, for its bar. */
const STEPS: moves.MoveState[] = ['queued', 'copying', 'catching_up', 'switching', 'completed'];

function told(err: unknown): never {
  if (err instanceof AppError && err.extra.errors?.length)
    throw new Error(`${err.message}: ${err.extra.errors.map((e) => `${e.path} ${e.message}`).join('; ')}`);
  throw err;
}

const bar = (format: string) =>
  new cliProgress.SingleBar(
    { format, hideCursor: true, barsize: 20, clearOnComplete: false, autopadding: true },
    cliProgress.Presets.shades_classic,
  );

/** Follow one move to its end (a bar through its states on a terminal, a line per state otherwise). */
export async function followMove(deps: moves.MoveDeps, moveId: string): Promise<number> {
  const tty = process.stdout.isTTY === true;
  let status = await moves.getMove(deps, moveId);
  console.log(`Move ${status.moveId}: store ${status.storeId} from ${status.from} to ${status.to}`);
  const progress = bar(' {state} [{bar}] {value}/{total}');
  if (tty) progress.start(STEPS.length - 1, 0, { state: status.state.padEnd(11) });
  let last = '';
  for (;;) {
    const step = Math.max(0, STEPS.indexOf(status.state));
    if (tty) progress.update(step, { state: status.state.padEnd(11) });
    else if (status.state !== last) console.log(`  ${status.state}`);
    last = status.state;
    if (status.state === 'completed' || status.state === 'failed') break;
    await sleep(POLL_MS);
    status = await moves.getMove(deps, moveId);
  }
  if (tty) progress.stop();
  if (status.state === 'failed') {
    console.log(`Move ${status.moveId} failed: ${status.error}. The store keeps its database on ${status.from}.`);
    return ExitCode.failed;
  }
  console.log(
    `Move ${status.moveId} completed: store ${status.storeId} is on ${status.to}; ${status.rowsCopied} rows copied, ` +
      `${status.changesReplayed} changes replayed, writes paused ${status.writePauseMs} ms.`,
  );
  return ExitCode.ok;
}

/** Follow a drain: a bar of its stores moved, failures as they happen. */
export async function followDrain(deps: moves.MoveDeps, drainId: string): Promise<number> {
  const tty = process.stdout.isTTY === true;
  let status = await moves.drainStatus(deps, drainId);
  console.log(
    `Drain ${drainId} of ${status.server}: ${status.total} stores, ${status.perServer} at a time (${status.state})`,
  );
  const progress = bar(' {server} [{bar}] {value}/{total} | ETA {eta_formatted} | moving {active} | failed {failed}');
  const payload = () => ({ server: status.server, active: status.active, failed: status.failed });
  if (tty) progress.start(status.total, 0, payload());
  const told = new Set<string>();
  let printed = -1;
  for (;;) {
    const done = status.completed + status.failed;
    if (tty) progress.update(done, payload());
    else if (done !== printed) console.log(`  ${done}/${status.total} stores done, ${status.failed} failed`);
    printed = done;
    for (const f of status.failures.filter((x) => !told.has(x.storeId))) {
      told.add(f.storeId);
      const line = `  failed: store ${f.storeId}: ${f.error}`;
      if (tty) progress.stop();
      console.log(line);
      if (tty) progress.start(status.total, done, payload());
    }
    if (status.state !== 'running') break;
    // Keep it going should its last move's worker have died before queueing the next ones.
    await moves.kickDrain(deps, drainId);
    await sleep(POLL_MS);
    status = await moves.drainStatus(deps, drainId);
  }
  if (tty) progress.stop();
  console.log(
    `Drain ${drainId} ${status.state}: ${status.completed} moved, ${status.failed} failed of ${status.total}.`,
  );
  return status.state === 'completed' ? ExitCode.ok : ExitCode.failed;
}

const perServerOption = (value: string) => {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 16)
    throw new InvalidArgumentError('--per-server must be a whole number from 1 to 16');
  return Number(value);
};

export function registerMoveCommands(program: Command, withMoves: WithMoves, operator: () => string): void {
  const actor = (): moves.Actor => ({ userId: null, label: operator() });
  const exit = (code: number) => {
    process.exitCode = code;
  };

  program
    .command('tenants:move')
    .description("move a store's managed database to another tenant server and follow it (again, if under way)")
    .argument('<store>', 'the store id')
    .argument('<server>', 'the tenant server to move to, as host:port')
    .option('--no-wait', 'start the move and return')
    .action((storeId: string, server: string, opts: { wait: boolean }) =>
      withMoves(async (deps) => {
        const latest = /^[0-9a-f-]{36}$/i.test(storeId) ? await moves.latestMoveOf(deps, storeId) : null;
        let moveId: string;
        if (latest && moves.ACTIVE_MOVE_STATES.includes(latest.state as (typeof moves.ACTIVE_MOVE_STATES)[number])) {
          if (latest.to !== server)
            throw new Error(`store ${storeId} is being moved to ${latest.to}, not ${server}: wait for that move`);
          console.log(`Attaching to move ${latest.moveId}, under way.`);
          moveId = latest.moveId;
        } else {
          moveId = (await moves.requestMove(deps, actor(), storeId, server).catch(told)).moveId;
          console.log(`Move ${moveId} queued.`);
        }
        if (opts.wait) exit(await followMove(deps, moveId));
      }),
    );

  program
    .command('tenants:drain')
    .description('move every active managed store off a tenant server, a few at a time, and follow it (again)')
    .argument('<server>', 'the tenant server to empty, as host:port')
    .option('--per-server <n>', 'stores moved at once (1–16, default 2)', perServerOption)
    .option('--no-wait', 'start the drain and return')
    .action((server: string, opts: { perServer?: number; wait: boolean }) =>
      withMoves(async (deps) => {
        const { drainId, created } = await moves
          .startDrain(deps, actor(), server, opts.perServer ?? deps.config.moves.perServer)
          .catch(told);
        console.log(created ? `Drain ${drainId} started.` : `Attaching to drain ${drainId}, under way.`);
        if (opts.wait) exit(await followDrain(deps, drainId));
      }),
    );
}
