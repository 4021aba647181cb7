import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter, once } from 'node:events';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type pg from 'pg';
import { pack as tarPack, type Pack } from 'tar-stream';
import { copyOut, inSnapshot, listTenantTables, tenantSchemaVersion, type TenantTable } from '../backups/tenant-tables';
import { ident } from '../db/tenant-server-admin';
import { CopyTextDecoder } from './copy-text';

/**
 * A store's data as a portable archive: a tar.gz of `tables/<table>.ndjson` (one JSON object per row, in
 * primary-key order) and, last, `manifest.json` (what was exported, row counts and the sha256 of each file).
 *
 * How it streams, in bounded memory: every table is read in one REPEATABLE READ READ ONLY snapshot with
 * `COPY (SELECT row_to_json …) TO STDOUT` and spooled to a temporary file (tar needs an entry's size before
 * its bytes), while the tables spooled before it go out to the client as tar entries, each file deleted once
 * sent. The database is read at its own pace, never the client's: a slow (or hostile) reader does not keep
 * a snapshot and a connection open on a server other stores share — it only keeps temporary files, at most
 * the store's uncompressed NDJSON, removed when the download ends or is cut off.
 *
 * Values JSON cannot hold exactly are strings: bigint and numeric (`"12345678901234567890"`, so a JSON
 * parser with doubles loses nothing), bytea (`"\\x0a1b"`, hex); timestamps are ISO 8601 in UTC with their
 * microseconds; json/jsonb columns are embedded as JSON.
 */

export const ARCHIVE_FORMAT = 'tenantry-export';
export const ARCHIVE_FORMAT_VERSION = 1;

export interface TableSummary {
  name: string;
  file: string;
  columns: string[];
  rows: number;
  bytes: number;
  sha256: string;
}

export interface ExportManifest {
  format: typeof ARCHIVE_FORMAT;
  formatVersion: number;
  storeId: string;
  schemaVersion: number;
  exportedAt: string;
  tables: TableSummary[];
}

/** Types rendered as strings (arrays of them as arrays of strings): JSON numbers are doubles to most readers. */
const AS_TEXT = new Set(['int8', 'numeric', 'money']);
const AS_TEXT_ARRAY = new Set(['_int8', '_numeric', '_money']);

/** The statement that writes one table as NDJSON (one row_to_json per COPY line), primary-key order. */
async function ndjsonCopySql(client: pg.ClientBase, table: TenantTable): Promise<string> {
  const { rows } = await client.query<{ name: string; type: string; pk: number | null }>(
    `SELECT a.attname AS name, t.typname AS type, array_position(i.indkey::int2[], a.attnum) AS pk
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
       LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
      WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`,
    [`public.${ident(table.name)}`],
  );
  const byName = new Map(rows.map((r) => [r.name, r]));
  const select = table.columns.map((name) => {
    const type = byName.get(name)?.type ?? '';
    const col = `r.${ident(name)}`;
    if (AS_TEXT.has(type)) return `${col}::text AS ${ident(name)}`;
    if (AS_TEXT_ARRAY.has(type)) return `${col}::text[] AS ${ident(name)}`;
    return col;
  });
  const order = rows
    .filter((r) => r.pk !== null)
    .sort((a, b) => a.pk! - b.pk!)
    .map((r) => `r.${ident(r.name)}`);
  // The row is built in a lateral subquery so that the order is that of the original (uncast) key columns.
  return (
    `COPY (SELECT row_to_json(x) FROM public.${ident(table.name)} r` +
    ` CROSS JOIN LATERAL (SELECT ${select.join(', ')}) x` +
    (order.length ? ` ORDER BY ${order.join(', ')}` : '') +
    `) TO STDOUT`
  );
}

/** Counts lines and bytes and hashes what passes. */
class Tally extends Transform {
  rows = 0;
  bytes = 0;
  private readonly hash = createHash('sha256');
  override _transform(chunk: Buffer, _e: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void) {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) this.rows++;
    done(null, chunk);
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

interface Spooled extends TableSummary {
  path: string;
}

/** Hands spooled tables from the reader (the snapshot) to the writer (the tar), in order, as they come. */
class Handover<T> {
  private readonly items: T[] = [];
  private ended = false;
  private failure: unknown;
  private wake?: () => void;

  push(item: T) {
    this.items.push(item);
    this.wake?.();
  }
  end(failure?: unknown) {
    this.ended = true;
    this.failure = failure;
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      if (this.items.length) yield this.items.shift()!;
      else if (this.failure !== undefined) throw this.failure;
      else if (this.ended) return;
      else await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}

/** Write one spooled file as a tar entry, with backpressure (the entry waits for the pack to be read). */
async function addEntry(pack: Pack, name: string, path: string, size: number, mtime: Date, signal: AbortSignal) {
  let entry!: ReturnType<Pack['entry']>;
  const written = new Promise<void>((resolve, reject) => {
    entry = pack.entry({ name, size, mtime, mode: 0o644 }, (err) => (err ? reject(err) : resolve()));
  });
  // Failures come through the callback (and the pack); awaited below, unless reading the file fails first.
  (entry as unknown as EventEmitter).on('error', () => {});
  written.catch(() => {});
  for await (const chunk of createReadStream(path, { signal })) {
    if (!entry.write(chunk as Buffer)) await once(entry as unknown as EventEmitter, 'drain', { signal });
  }
  (entry as unknown as NodeJS.WritableStream).end();
  await written;
}

/**
 * Write the archive of the database `client` is connected to into `out` (gzip'd tar), as described above.
 * `abort` stops it: aborted by the caller (the client went away), or here when writing fails. Once it is
 * aborted, a COPY may be running on `client`: the caller must cut that connection (on the abort event).
 * The temporary files are removed here in every case. Resolves once `out` has the whole archive.
 */
export async function writeStoreArchive(
  client: pg.ClientBase,
  storeId: string,
  out: Writable,
  abort: AbortController,
): Promise<ExportManifest> {
  const signal = abort.signal;
  const dir = await mkdtemp(join(tmpdir(), 'tenantry-export-'));
  try {
    const exportedAt = new Date();
    const spooled = new Handover<Spooled>();
    let schemaVersion = 0;
    const reading = inSnapshot(client, async () => {
      // Output that does not depend on the server's or the role's settings.
      await client.query(`SET LOCAL TimeZone = 'UTC'; SET LOCAL bytea_output = 'hex'; SET LOCAL DateStyle = 'ISO'`);
      schemaVersion = await tenantSchemaVersion(client);
      const tables = await listTenantTables(client);
      for (const [i, table] of tables.entries()) {
        signal.throwIfAborted();
        const path = join(dir, `${i}.ndjson`);
        const tally = new Tally();
        const copy = copyOut(client, { sql: await ndjsonCopySql(client, table) });
        await pipeline(copy, new CopyTextDecoder(), tally, createWriteStream(path), { signal });
        spooled.push({
          name: table.name,
          file: `tables/${table.name}.ndjson`,
          columns: table.columns,
          rows: tally.rows,
          bytes: tally.bytes,
          sha256: tally.digest(),
          path,
        });
      }
    }).then(
      () => spooled.end(),
      (err: unknown) => {
        if (!signal.aborted) abort.abort(err);
        spooled.end(err ?? new Error('reading the store failed'));
      },
    );

    const pack = tarPack();
    pack.on('error', () => {}); // heard through `sending`
    const sending = pipeline(pack, createGzip(), out, { signal });
    // Heard at once: the client may go away while a table is still being read.
    sending.catch((err: unknown) => {
      if (!signal.aborted) abort.abort(err);
    });
    const tables: TableSummary[] = [];
    try {
      for await (const { path, ...summary } of spooled) {
        await addEntry(pack, summary.file, path, summary.bytes, exportedAt, signal);
        await rm(path, { force: true });
        tables.push(summary);
      }
      const manifest: ExportManifest = {
        format: ARCHIVE_FORMAT,
        formatVersion: ARCHIVE_FORMAT_VERSION,
        storeId,
        schemaVersion,
        exportedAt: exportedAt.toISOString(),
        tables,
      };
      const body = Buffer.from(JSON.stringify(manifest, null, 2) + '\n');
      await new Promise<void>((resolve, reject) =>
        pack.entry({ name: 'manifest.json', size: body.length, mtime: exportedAt, mode: 0o644 }, body, (err) =>
          err ? reject(err) : resolve(),
        ),
      );
      pack.finalize();
      await sending;
      return manifest;
    } catch (err) {
      if (!signal.aborted) abort.abort(err);
      pack.destroy(err as Error);
      throw err;
    } finally {
      await reading;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
