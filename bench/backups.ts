/**
 * Backup and restore throughput of one store vs `pg_dump -Fc | pg_restore` of the same database, in the same
 * run: `npm run bench -- --only backups [--products 100000] [--rounds 3]` (Postgres on 127.0.0.1:5432, Redis);
 * the best of the rounds is kept for each.
 * Rows/s count every table's rows; MB/s is the COPY text volume (what both tools read and write), the archive
 * sizes are printed beside.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { QueryTypes } from 'sequelize';
import { processBackup, processRestore, queueBackup, requestRestore } from '../src/backups/backups.service';
import { ident } from '../src/db/tenant-server-admin';
import { registerUser, startTestApp } from '../test/helpers/app';
import { adminQuery } from '../test/helpers/db';
import { createActiveStore, dropTestTenants } from '../test/helpers/tenants';
import { seedCatalogue } from './store-fixture';

export async function backupsBenchmark({ products, rounds }: { products: number; rounds: number }): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tenantry-bench-backups-'));
  const t = await startTestApp('bench_backups', { BACKUP_DIR: dir });
  try {
    const owner = await registerUser(t.app);
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await seedCatalogue(store, products);

    // Rounds alternate the four runs, each run's best is kept (the machine is shared: a round can be slowed
    // by others' work), and every round's restore ratio is printed beside.
    type Run = { ms: number; bytes: number; steps?: object };
    const best: Record<'backup' | 'restore' | 'pgDump' | 'pgRestore', Run | null> = {
      backup: null,
      restore: null,
      pgDump: null,
      pgRestore: null,
    };
    const keep = (name: keyof typeof best, run: Run) => {
      if (!best[name] || run.ms < best[name].ms) best[name] = run;
    };
    let rows = 0;
    let copyMb = 0;
    const dump = path.join(dir, 'store.dump');
    const baseline = `${store.database}_pgr`;
    for (let round = 1; round <= rounds; round++) {
      const backupId = await queueBackup(t.ctx, store.id, 'manual', owner.user.id);
      let started = performance.now();
      const backup = (await processBackup(t.ctx, backupId)) as { bytes: number; rows: number };
      keep('backup', { ms: performance.now() - started, bytes: backup.bytes });
      rows = backup.rows;
      const [row] = await t.ctx.master.sequelize.query<{ copy_bytes: number }>(
        `SELECT sum((x->>'bytes')::bigint)::bigint AS copy_bytes FROM store_backups, jsonb_array_elements(manifest->'tables') x WHERE id = $1::uuid`,
        { bind: [backupId], type: QueryTypes.SELECT },
      );
      copyMb = Number(row.copy_bytes) / 1e6;

      const { jobId } = await requestRestore(t.ctx, owner.user.id, store.id, backupId);
      started = performance.now();
      const restored = (await processRestore(t.ctx, jobId.replace(/^restore-/, ''))) as { steps: object };
      const restoreMs = performance.now() - started;
      keep('restore', { ms: restoreMs, bytes: backup.bytes, steps: restored.steps });

      // The store's database now (the restored one: the one it replaced is closed), same data.
      const current = (await t.ctx.master.models.StoreDatabase.findByPk(store.id))!.databaseName!;
      started = performance.now();
      execFileSync('pg_dump', ['-Fc', '-h', '127.0.0.1', '-U', 'postgres', '-d', current, '-f', dump]);
      keep('pgDump', { ms: performance.now() - started, bytes: statSync(dump).size });
      await adminQuery(`CREATE DATABASE ${ident(baseline)}`);
      started = performance.now();
      execFileSync('pg_restore', ['-h', '127.0.0.1', '-U', 'postgres', '-d', baseline, '--no-owner', dump]);
      const pgRestoreMs = performance.now() - started;
      keep('pgRestore', { ms: pgRestoreMs, bytes: statSync(dump).size });
      await adminQuery(`DROP DATABASE IF EXISTS ${ident(baseline)} WITH (FORCE)`);
      console.log(
        `round ${round}: restore ${(restoreMs / 1000).toFixed(2)} s, pg_restore ${(pgRestoreMs / 1000).toFixed(2)} s, ` +
          `ratio ${(pgRestoreMs / restoreMs).toFixed(2)}x ${JSON.stringify(restored.steps)}`,
      );
    }

    const line = (name: string, run: Run) =>
      `${name.padEnd(22)} ${(run.ms / 1000).toFixed(2).padStart(7)} s ${Math.round(rows / (run.ms / 1000))
        .toString()
        .padStart(
          9,
        )} rows/s ${(copyMb / (run.ms / 1000)).toFixed(1).padStart(7)} MB/s   archive ${(run.bytes / 1e6).toFixed(2)} MB`;
    console.log(`${products} products, ${rows} rows in all, ${copyMb.toFixed(1)} MB of COPY text; best of ${rounds}`);
    console.log(line('tenantry backup', best.backup!));
    console.log(line('tenantry restore', best.restore!), JSON.stringify(best.restore!.steps));
    console.log(line('pg_dump -Fc', best.pgDump!));
    console.log(line('pg_restore', best.pgRestore!));
    console.log(
      `backup ${(best.pgDump!.ms / best.backup!.ms).toFixed(2)}x pg_dump, restore ${(best.pgRestore!.ms / best.restore!.ms).toFixed(2)}x pg_restore (speed)`,
    );
  } finally {
    // The databases the rounds' restores made (the original one goes with the test tenants).
    const restored = await t.ctx.master.sequelize
      .query<{ name: string }>(`SELECT new_database AS name FROM store_restores WHERE new_database IS NOT NULL`, {
        type: QueryTypes.SELECT,
      })
      .catch(() => []);
    for (const { name } of restored) await adminQuery(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
    await t.close();
    await dropTestTenants();
    rmSync(dir, { recursive: true, force: true });
  }
}
