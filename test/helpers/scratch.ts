import { statfsSync } from 'node:fs';
import os from 'node:os';

/**
 * Where a throw-away cluster of `bytes` had better live: /dev/shm (memory) when it has room to spare, as
 * copying and deleting a few hundred databases on a busy disk takes minutes; the usual temp folder otherwise.
 */
export function scratchRoot(bytes: number): string {
  try {
    const fs = statfsSync('/dev/shm');
    if (fs.bavail * fs.bsize > bytes * 2) return '/dev/shm';
  } catch {
    // No /dev/shm (not Linux).
  }
  return os.tmpdir();
}

/** An empty Postgres database takes this much disk (its catalogs). */
export const DATABASE_BYTES = 8 * 1024 * 1024;
