/**
 * Backup and restore throughput of one store vs `pg_dump -Fc | pg_restore` of the same database, in the same
 * run: `NODE_ENV=test npx tsx bench/backups.ts [products]` (default 20000; Postgres on 127.0.0.1:5432, Redis).
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
import { adminQuery, urlFor } from '../test/helpers/db';
import { createActiveStore, dropTestTenants, tenantQuery } from '../test/helpers/tenants';

async function main() {
  const products = Number(process.argv[2] ?? 20000);
  const dir = mkdtempSync(path.join(tmpdir(), 'tenantry-bench-backups-'));
  const t = await startTestApp('bench_backups', { BACKUP_DIR: dir });
  try {
    const owner = await registerUser(t.app);
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await tenantQuery(
      store,
      `INSERT INTO products (sku, name, description, price_cents)
       SELECT 'sku-' || i, 'Product ' || i, repeat('A fine product. ', 8) || i, i FROM generate_series(1, $1::int) i`,
      [products],
    );
    await tenantQuery(store, `INSERT INTO inventory (product_id, stock) SELECT id, 10 FROM products`);
    await adminQuery(`VACUUM ANALYZE`, urlFor(store.database));

    const backupId = await queueBackup(t.ctx, store.id, 'manual', owner.user.id);
    let started = performance.now();
    const backup = (await processBackup(t.ctx, backupId)) as { bytes: number; rows: number };
    const backupMs = performance.now() - started;
    const [row] = await t.ctx.master.sequelize.query<{ copy_bytes: number }>(
      `SELECT sum((x->>'bytes')::bigint)::bigint AS copy_bytes FROM store_backups, jsonb_array_elements(manifest->'tables') x WHERE id = $1::uuid`,
      { bind: [backupId], type: QueryTypes.SELECT },
    );
    const copyMb = Number(row.copy_bytes) / 1e6;

    const { jobId } = await requestRestore(t.ctx, owner.user.id, store.id, backupId);
    started = performance.now();
    const restored = (await processRestore(t.ctx, jobId.replace(/^restore-/, ''))) as { steps: object };
    const restoreMs = performance.now() - started;

    // The store's database now (the restored one: the one it replaced is closed), same data.
    const current = (await t.ctx.master.models.StoreDatabase.findByPk(store.id))!.databaseName!;
    const dump = path.join(dir, 'store.dump');
    const baseline = `${store.database}_pgr`;
    started = performance.now();
    execFileSync('pg_dump', ['-Fc', '-h', '127.0.0.1', '-U', 'postgres', '-d', current, '-f', dump]);
    const dumpMs = performance.now() - started;
    await adminQuery(`CREATE DATABASE ${ident(baseline)}`);
    started = performance.now();
    execFileSync('pg_restore', ['-h', '127.0.0.1', '-U', 'postgres', '-d', baseline, '--no-owner', dump]);
    const pgRestoreMs = performance.now() - started;
    await adminQuery(`DROP DATABASE IF EXISTS ${ident(baseline)} WITH (FORCE)`);

    const line = (name: string, ms: number, bytes: number) =>
      `${name.padEnd(22)} ${(ms / 1000).toFixed(2).padStart(7)} s ${Math.round(backup.rows / (ms / 1000))
        .toString()
        .padStart(
          9,
        )} rows/s ${(copyMb / (ms / 1000)).toFixed(1).padStart(7)} MB/s   archive ${(bytes / 1e6).toFixed(2)} MB`;
    console.log(`${products} products, ${backup.rows} rows in all, ${copyMb.toFixed(1)} MB of COPY text`);
    console.log(line('tenantry backup', backupMs, backup.bytes));
    console.log(line('tenantry restore', restoreMs, backup.bytes), JSON.stringify(restored.steps));
    console.log(line('pg_dump -Fc', dumpMs, statSync(dump).size));
    console.log(line('pg_restore', pgRestoreMs, statSync(dump).size));
  } finally {
    await t.close();
    await dropTestTenants();
    rmSync(dir, { recursive: true, force: true });
  }
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
