import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type pg from 'pg';
import { copyOut, listTenantSequences, listTenantTables, type TenantSequence } from './tenant-tables';

/**
 * The plaintext of a backup archive (gzip-compressed, then encrypted by stream-cipher.ts): a sequence of
 * frames, each `type (1 byte) | length (4 bytes BE) | payload`:
 *
 *   H {format, storeId, backupId, schemaVersion}          once, first
 *   T {name, columns}                                     a table begins
 *   D <COPY text bytes>                                   its rows, in pieces (text format: one row a line)
 *   E                                                     the table ends
 *   M <manifest JSON>                                     once, last
 *
 * Text COPY output is the same whatever the server's major version, so an archive restores anywhere.
 */
export const ARCHIVE_FORMAT = 1;

export interface ManifestTable {
  name: string;
  columns: string[];
  rows: number;
  bytes: number;
  /** sha256 (hex) of the table's COPY text, as written and as read back. */
  sha256: string;
}

export interface BackupManifest {
  format: number;
  storeId: string;
  backupId: string;
  schemaVersion: number;
  createdAt: string;
  tables: ManifestTable[];
  sequences: TenantSequence[];
}

export interface ArchiveHeader {
  format: number;
  storeId: string;
  backupId: string;
  schemaVersion: number;
}

export type Frame =
  | { type: 'H'; header: ArchiveHeader }
  | { type: 'T'; table: { name: string; columns: string[] } }
  | { type: 'D'; data: Buffer }
  | { type: 'E' }
  | { type: 'M'; manifest: BackupManifest };

const MAX_FRAME = 16 * 1024 * 1024;

function frame(type: string, payload: Buffer | string = ''): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

function countLines(chunk: Buffer): number {
  let n = 0;
  for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) n++;
  return n;
}

/**
 * The frames of every table of the store's database, read with `client` — which must be inside one snapshot
 * (inSnapshot) for the whole iteration. `manifest` is filled as the tables are read, and is complete once
 * the M frame has been yielded.
 */
export async function* archiveFrames(
  client: pg.ClientBase,
  header: ArchiveHeader,
  manifest: BackupManifest,
): AsyncGenerator<Buffer> {
  yield frame('H', JSON.stringify(header));
  for (const table of await listTenantTables(client)) {
    yield frame('T', JSON.stringify(table));
    const hash = createHash('sha256');
    let rows = 0;
    let bytes = 0;
    for await (const chunk of copyOut(client, table) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      rows += countLines(chunk);
      bytes += chunk.length;
      yield frame('D', chunk);
    }
    manifest.tables.push({ name: table.name, columns: table.columns, rows, bytes, sha256: hash.digest('hex') });
    yield frame('E');
  }
  // After the data: a sequence never goes back, so it is at least what any copied row holds.
  manifest.sequences = await listTenantSequences(client);
  yield frame('M', JSON.stringify(manifest));
}

/**
 * Bytes arriving in pieces, taken out by length: pieces are joined only as far as a read needs (joining
 * every arrival onto what is left would copy a large frame over and over).
 */
class ByteQueue {
  private pieces: Buffer[] = [];
  length = 0;

  push(piece: Buffer): void {
    this.pieces.push(piece);
    this.length += piece.length;
  }

  /** The first `n` bytes, left in place (n <= length). */
  peek(n: number): Buffer {
    if (this.pieces[0].length < n) this.pieces = [Buffer.concat(this.pieces)];
    return this.pieces[0].subarray(0, n);
  }

  /** Take the first `n` bytes out (n <= length). */
  take(n: number): Buffer {
    const out = this.peek(n);
    const first = this.pieces[0];
    if (first.length === n) this.pieces.shift();
    else this.pieces[0] = first.subarray(n);
    this.length -= n;
    return out;
  }
}

/** Parse the frames of a decrypted, decompressed archive stream. Fails on a malformed stream. */
export async function* readFrames(source: Readable): AsyncGenerator<Frame> {
  const queue = new ByteQueue();
  let need = 5;
  for await (const chunk of source as AsyncIterable<Buffer>) {
    queue.push(chunk);
    while (queue.length >= need) {
      const head = queue.peek(5);
      const len = head.readUInt32BE(1);
      if (len > MAX_FRAME) throw new Error('malformed archive: a frame is too large');
      if (queue.length < 5 + len) {
        need = 5 + len;
        break;
      }
      const type = String.fromCharCode(head[0]);
      queue.take(5);
      const payload = len ? queue.take(len) : Buffer.alloc(0);
      need = 5;
      switch (type) {
        case 'H':
          yield { type, header: JSON.parse(payload.toString()) as ArchiveHeader };
          break;
        case 'T':
          yield { type, table: JSON.parse(payload.toString()) as { name: string; columns: string[] } };
          break;
        case 'D':
          yield { type, data: payload };
          break;
        case 'E':
          yield { type };
          break;
        case 'M':
          yield { type, manifest: JSON.parse(payload.toString()) as BackupManifest };
          break;
        default:
          throw new Error(`malformed archive: unknown frame "${type}"`);
      }
    }
  }
  if (queue.length) throw new Error('malformed archive: it ends inside a frame');
}

export { countLines };
