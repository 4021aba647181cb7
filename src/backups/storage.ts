import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * Where backup archives live, by key (`<storeId>/<backupId>.tbk`): the backup code sees only this, so an
 * S3-compatible store is one more implementation (put = a multipart upload of the stream, list = a prefix
 * listing) chosen where the context builds it.
 */
export interface BackupStorage {
  /** Write the stream under `key`; the object appears only once complete. Answers the bytes written. */
  put(key: string, body: Readable): Promise<{ bytes: number }>;
  /** The object's bytes; fails when there is none. */
  get(key: string): Promise<Readable>;
  /** Remove the object and what an unfinished write of it left (a worker killed mid-put); nothing to remove is not an error. */
  delete(key: string): Promise<void>;
  /** The keys under `prefix` (a store's id); with '' the top-level prefixes (the store ids). */
  list(prefix: string): Promise<string[]>;
}

const KEY = /^[A-Za-z0-9_-]+(\/[A-Za-z0-9_.-]+)*$/;

/**
 * Archives as files under one directory (BACKUP_DIR), written to a temporary name (`<key>.partial`), flushed to
 * disk and renamed when complete: a file under its key is always a whole archive, even after a crash.
 */
export class LocalDirectoryStorage implements BackupStorage {
  constructor(private readonly root: string) {}

  private file(key: string): string {
    if (!KEY.test(key) || key.split('/').some((p) => p === '..' || p === '.'))
      throw new Error(`bad storage key "${key}"`);
    return path.join(this.root, key);
  }

  async put(key: string, body: Readable): Promise<{ bytes: number }> {
    const file = this.file(key);
    await mkdir(path.dirname(file), { recursive: true });
    const partial = `${file}.partial`;
    try {
      // flush: fsync before close, so the rename never publishes a file whose bytes a crash could still lose.
      await pipeline(body, createWriteStream(partial, { mode: 0o600, flush: true }));
      await rename(partial, file);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
    return { bytes: (await stat(file)).size };
  }

  async get(key: string): Promise<Readable> {
    const file = this.file(key);
    await stat(file); // a missing object fails here, not later inside a pipeline
    return createReadStream(file);
  }

  async delete(key: string): Promise<void> {
    const file = this.file(key);
    await rm(`${file}.partial`, { force: true });
    await rm(file, { force: true });
  }

  async list(prefix: string): Promise<string[]> {
    const dir = prefix ? this.file(prefix) : this.root;
    const names = await readdir(dir).catch(() => [] as string[]);
    return names.filter((n) => !n.endsWith('.partial')).map((n) => path.posix.join(prefix, n));
  }
}
