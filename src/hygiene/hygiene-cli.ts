import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { config } from '../config';
import type { MasterDb } from '../db/master';
import { AdminPools } from '../db/tenant-server-admin';
import { tenantServers } from '../db/tenant-servers';
import { busChannel, EventBus } from '../lib/bus';
import { Encryptor } from '../lib/crypto';
import { connectRedis, createRedis } from '../lib/redis';
import { keyStatus, rotateKeys, type KeyDeps, type KeyStatus } from './key-rotation';
import { allStoresWithDatabase, rotateStorePasswords, type PasswordDeps, type StoreRotation } from './store-passwords';

/**
 * The fleet hygiene commands of `tenantry`: keys:rotate, keys:status, tenants:rotate-passwords.
 *
 * Exit codes:
 *   0  done: keys:rotate left no ciphertext outside the newest key; every store asked for was rotated or skipped
 *      as not ours (external) / not ready
 *   1  the command could not do its work (no master DB, no Redis, a bad option)
 *   2  keys:rotate left ciphertexts that do not decrypt (a key missing from ENCRYPTION_KEYS, a tampered row);
 *      tenants:rotate-passwords could not rotate some stores (each named, with the reason)
 */
export const HygieneExit = { ok: 0, error: 1, failures: 2 } as const;

/**
 * Opens the master DB for the length of `run`, with a pool of at least 2 × 4 + 1 (a password rotation holds a lock
 * on one connection while it writes on another).
 */
export type WithMaster = <T>(run: (master: MasterDb, masterUrl: string) => Promise<T>) => Promise<T>;

const keyDeps = (master: MasterDb): KeyDeps => ({
  master,
  encryptor: new Encryptor(config.encryptionKeys),
  keyIds: config.encryptionKeys.map((k) => k.id),
});

/** A bar on a terminal; a line now and then otherwise (a log, a CI job). */
function progress(label: string) {
  const tty = process.stdout.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        { format: ` ${label} [{bar}] {value}/{total} | ETA {eta_formatted}`, hideCursor: true, etaBuffer: 50 },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  let started = false;
  let printedAt = 0;
  // A single bar cannot print above itself: its lines come once it is done.
  const held: string[] = [];
  return {
    update(done: number, total: number) {
      if (bar) {
        if (!started) bar.start(total, done);
        else {
          bar.setTotal(total);
          bar.update(done);
        }
      } else if (done === total || Date.now() - printedAt >= 5000) {
        console.log(`  ${label}: ${done}/${total}`);
        printedAt = Date.now();
      }
      started = true;
    },
    log(line: string) {
      if (bar) held.push(line);
      else console.log(line);
    },
    stop() {
      bar?.stop();
      for (const line of held.splice(0)) console.log(line);
    },
  };
}

function printStatus(status: KeyStatus): void {
  console.log(`Newest key (encrypts): ${status.newestKeyId}`);
  const rows = status.usage.map((u) => ({
    column: `${u.table}.${u.column}`,
    key: u.keyId,
    format: u.version,
    count: String(u.count),
    state: u.current ? 'current' : u.configured ? 'to rotate' : 'KEY NOT CONFIGURED',
  }));
  if (!rows.length) console.log('No stored ciphertexts.');
  else {
    const cols = ['column', 'key', 'format', 'count', 'state'] as const;
    const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => r[c].length)));
    const line = (v: string[]) =>
      v
        .map((x, i) => x.padEnd(widths[i]))
        .join('  ')
        .trimEnd();
    console.log(line([...cols]));
    for (const r of rows) console.log(line(cols.map((c) => r[c])));
  }
  const outdated = Object.entries(status.outdated);
  if (outdated.length) console.log(`Still to rotate: ${outdated.map(([id, n]) => `${n} under "${id}"`).join(', ')}.`);
  else console.log(`Every ciphertext is under "${status.newestKeyId}".`);
  for (const a of status.archives)
    console.log(
      `${a.count} backup archive${a.count === 1 ? '' : 's'} use${a.count === 1 ? 's' : ''} key "${a.keyId}" until ${new Date(a.until).toISOString()} (archives are not re-encrypted: the key stays until they expire).`,
    );
  for (const id of status.unusedKeyIds)
    console.log(`Key "${id}" is used by no ciphertext: it can be removed from ENCRYPTION_KEYS.`);
}

export function registerHygieneCommands(program: Command, withMaster: WithMaster, operator: () => string): void {
  program
    .command('keys:status')
    .description('how many stored ciphertexts use each encryption key id, per table and column')
    .action(() =>
      withMaster(async (master) => {
        printStatus(await keyStatus(keyDeps(master)));
      }),
    );

  program
    .command('keys:rotate')
    .description(
      'encrypt every stored secret again under the newest key of ENCRYPTION_KEYS (in batches, resumable), then report what uses each key',
    )
    .option('--batch <n>', 'rows per transaction (default 200)', (v) => {
      if (!/^\d+$/.test(v) || Number(v) < 1) throw new Error('--batch must be a positive whole number');
      return Number(v);
    })
    .action((opts: { batch?: number }) =>
      withMaster(async (master) => {
        const bar = progress('ciphertexts');
        const result = await rotateKeys(keyDeps(master), {
          actor: operator(),
          batchSize: opts.batch,
          onProgress: (done, total) => bar.update(done, total),
        }).finally(() => bar.stop());
        console.log(
          `Rotated ${result.rotated} of ${result.total} ciphertexts to key "${result.newestKeyId}"` +
            (result.changedMeanwhile ? `, ${result.changedMeanwhile} rewritten meanwhile by the application` : '') +
            (result.failed.length ? `, ${result.failed.length} failed` : '') +
            '.',
        );
        for (const f of result.failed)
          console.log(`  failed: ${f.table}.${f.column} ${Object.values(f.row).join('/')}: ${f.error}`);
        printStatus(result.status);
        if (result.failed.length || Object.keys(result.status.outdated).length) process.exitCode = HygieneExit.failures;
      }),
    );

  program
    .command('tenants:rotate-passwords')
    .description(
      "give managed stores' database roles a new password (set on the server, stored encrypted; no request fails)",
    )
    .option('--stores <ids>', 'only these stores (comma-separated ids); default: every store with a database', (v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    )
    .option('--concurrency <n>', 'stores rotated at once (1-4, default 4)', (v) => {
      if (!/^[1-4]$/.test(v)) throw new Error('--concurrency must be 1, 2, 3 or 4');
      return Number(v);
    })
    .action((opts: { stores?: string[]; concurrency?: number }) =>
      withMaster(async (master, masterUrl) => {
        // Publishing only (never started): the API instances and workers drop the rotated stores' handles.
        const redis = createRedis(config.redisUrl, 'cli');
        const adminPools = new AdminPools();
        try {
          await connectRedis(redis, config.redisUrl);
          const bus = new EventBus(redis, redis, busChannel(config.redisPrefix));
          const deps: PasswordDeps = {
            master,
            encryptor: new Encryptor(config.encryptionKeys),
            adminPools,
            servers: tenantServers({ config, masterUrl }),
            // What ConnectionManager.invalidate publishes: every instance drops the store's handle.
            invalidate: (storeId) => bus.publish({ type: 'tenant.invalidate', storeId }),
          };
          const storeIds = opts.stores ?? (await allStoresWithDatabase(master));
          const bar = progress('stores');
          let done = 0;
          bar.update(0, storeIds.length);
          const results = await rotateStorePasswords(deps, storeIds, {
            actor: operator(),
            concurrency: opts.concurrency,
            onDone: (r) => {
              if (r.outcome === 'failed') bar.log(`  failed: store ${r.storeId}: ${r.reason}`);
              bar.update(++done, storeIds.length);
            },
          }).finally(() => bar.stop());
          report(results);
          if (results.some((r) => r.outcome === 'failed')) process.exitCode = HygieneExit.failures;
        } finally {
          await adminPools.close();
          await redis.quit().catch(() => redis.disconnect());
        }
      }),
    );
}

function report(results: StoreRotation[]): void {
  const by = (o: StoreRotation['outcome']) => results.filter((r) => r.outcome === o);
  for (const r of by('skipped')) console.log(`  skipped: store ${r.storeId}: ${r.reason}`);
  console.log(
    `Passwords rotated: ${by('rotated').length}, skipped: ${by('skipped').length}, failed: ${by('failed').length} (of ${results.length} stores).`,
  );
}
