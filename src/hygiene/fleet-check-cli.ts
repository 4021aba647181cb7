import { Command, InvalidArgumentError } from 'commander';
import { config } from '../config';
import type { MasterDb } from '../db/master';
import { AdminPools } from '../db/tenant-server-admin';
import { Encryptor } from '../lib/crypto';
import { Queues } from '../queue/queues';
import { runDriftCheck, type HygieneDeps } from './drift';
import { DEFAULT_GRACE_MINUTES, reconcile, type ReconcileReport } from './reconcile';

/**
 * The fleet check commands of `tenantry`: tenants:drift and tenants:reconcile (the same services as
 * GET /api/admin/tenants/drift and POST /api/admin/tenants/reconcile). `--json` prints the API's answer.
 *
 * Exit codes:
 *   0  tenants:drift: no store differs; tenants:reconcile: nothing found, or (--apply) everything found repaired
 *   1  the command could not do its work (a bad option, no master DB, an unknown check to resume)
 *   2  tenants:drift: some store differs; tenants:reconcile: findings left (a dry run's, or those apply does not repair)
 */
export const FleetCheckExit = { ok: 0, error: 1, found: 2 } as const;

/** Opens the master DB for the length of `run` (cli.ts). */
export type WithMaster = <T>(run: (master: MasterDb, masterUrl: string) => Promise<T>) => Promise<T>;

const integer = (name: string) => (value: string) => {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be a whole number`);
  return Number(value);
};

/** What the checks need beyond the master DB: the credentials' key, admin pools, the queues; closed after. */
async function withDeps<T>(withMaster: WithMaster, run: (deps: HygieneDeps) => Promise<T>): Promise<T> {
  return withMaster(async (master, masterUrl) => {
    const adminPools = new AdminPools();
    const queues = new Queues({ config, redisPrefix: config.redisPrefix });
    try {
      return await run({
        config,
        masterUrl,
        master,
        encryptor: new Encryptor(config.encryptionKeys),
        adminPools,
        queues,
      });
    } finally {
      await queues.close();
      await adminPools.close();
    }
  });
}

function printReconcile(report: ReconcileReport): void {
  const what = report.applied ? `apply${report.dropOrphans ? ' with --drop-orphans' : ''}` : 'dry run';
  console.log(
    `Reconcile (${what}; prefix ${report.prefix || '(none)'}; grace ${report.graceMinutes} min): ` +
      report.servers
        .map((s) => `${s.server} ${s.reachable ? `${s.databases} databases, ${s.roles} roles` : 'unreachable'}`)
        .join('; '),
  );
  for (const f of report.findings) {
    const state = f.repaired
      ? `repaired: ${f.repair}`
      : report.applied
        ? (f.error ?? 'not repaired')
        : f.repair
          ? `apply: ${f.repair}`
          : 'report only';
    console.log(`  ${f.kind}  ${f.server}  ${f.detail}  [${state}]`);
  }
  for (const k of report.kept)
    console.log(`  kept  ${k.server}  replaced database ${k.name} of store ${k.storeId} kept until ${k.until}`);
  const left = report.findings.filter((f) => !f.repaired).length;
  console.log(
    `${report.findings.length} found, ${report.repairs.length} repaired, ${left} left.` +
      (report.applied || report.findings.length === 0 ? '' : ' Nothing was changed (--apply makes the safe repairs).'),
  );
}

export function registerFleetCheckCommands(program: Command, withMaster: WithMaster, operator: () => string): void {
  const exit = (code: number) => {
    process.exitCode = code;
  };
  program
    .command('tenants:drift')
    .description("compare every store database's migrations and catalogue with what this code ships")
    .option(
      '--per-server <n>',
      'store databases compared at once per tenant server (default 8)',
      integer('--per-server'),
    )
    .option('--resume <checkId>', 'finish a check that was cut off (its stores not compared yet)')
    .option('--json', 'print the report as the API answers it')
    .action((opts: { perServer?: number; resume?: string; json?: boolean }) =>
      withDeps(withMaster, async (deps) => {
        const report = await runDriftCheck(deps, operator(), { perServer: opts.perServer, resume: opts.resume });
        if (opts.json) console.log(JSON.stringify(report, null, 2));
        else {
          for (const item of report.items) console.log(`  ${item.storeId}  ${item.kind}  ${item.detail}`);
          console.log(
            `Drift check ${report.checkId}: ${report.checked} stores compared, ${report.differing} differ (${report.ms} ms).`,
          );
        }
        exit(report.differing ? FleetCheckExit.found : FleetCheckExit.ok);
      }),
    );
  program
    .command('tenants:reconcile')
    .description('compare the databases and roles on every tenant server with the registry (a dry run unless --apply)')
    .option('--apply', 'make the safe repairs (owners, CONNECT rights, lost provisioning jobs, leftovers)')
    .option('--drop-orphans', 'with --apply: also drop orphaned databases (audited)')
    .option(
      '--grace <minutes>',
      `younger databases are not orphans (default ${DEFAULT_GRACE_MINUTES})`,
      integer('--grace'),
    )
    .option('--json', 'print the report as the API answers it')
    .action((opts: { apply?: boolean; dropOrphans?: boolean; grace?: number; json?: boolean }) => {
      if (opts.dropOrphans && !opts.apply) throw new Error('--drop-orphans needs --apply');
      return withDeps(withMaster, async (deps) => {
        const report = await reconcile(
          deps,
          { userId: null, label: operator() },
          { apply: opts.apply, dropOrphans: opts.dropOrphans, graceMinutes: opts.grace },
        );
        if (opts.json) console.log(JSON.stringify(report, null, 2));
        else printReconcile(report);
        exit(report.findings.some((f) => !f.repaired) ? FleetCheckExit.found : FleetCheckExit.ok);
      });
    });
}
