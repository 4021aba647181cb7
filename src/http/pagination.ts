import { z } from 'zod';
import { ErrorCode, fail } from '../lib/errors';

/** `?limit=` (1–100, default 20) and `?cursor=` of every list; nothing else (extend it for more). */
export const ListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z
    .string()
    .min(1)
    .max(300)
    .regex(/^[A-Za-z0-9_-]+$/, 'must be the nextCursor of a previous page')
    .optional()
    .describe('The `nextCursor` of the previous page, as given: opaque (a cursor this API did not give out → 400)'),
});

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export const pageOf = <T extends z.ZodType>(item: T) =>
  z.object({ items: z.array(item), nextCursor: z.string().nullable() });

/** Keyset position: the sort timestamp (as Postgres printed it, full precision) and the row id. */
export interface Position {
  ts: string;
  id: string;
}

export function encodeCursor(p: Position): string {
  return Buffer.from(JSON.stringify([p.ts, p.id])).toString('base64url');
}

/** What a list's row ids are: UUIDs, or the bigserial of a log (the audit trail). */
export type IdKind = 'uuid' | 'bigint';
const ID_FORMAT: Record<IdKind, RegExp> = { uuid: /^[0-9a-f-]{36}$/, bigint: /^[1-9][0-9]{0,17}$/ };

export function decodeCursor(cursor: string | undefined, idKind: IdKind = 'uuid'): Position | null {
  if (!cursor) return null;
  try {
    const [ts, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown[];
    if (typeof ts === 'string' && typeof id === 'string' && !Number.isNaN(Date.parse(ts)) && ID_FORMAT[idKind].test(id))
      return { ts, id };
  } catch {
    // fall through
  }
  throw fail(ErrorCode.VALIDATION_FAILED, 'The cursor is not one this API gave out');
}

/**
 * The keyset condition "older than this position" on `alias`.created_at/id (lists sort newest first), its two
 * positional parameters appended to `values`.
 */
export function olderThan(alias: string, after: Position, values: unknown[], idKind: IdKind = 'uuid'): string {
  values.push(after.ts, after.id);
  return `(${alias}.created_at, ${alias}.id) < ($${values.length - 1}::timestamptz, $${values.length}::${idKind})`;
}

/** Given limit+1 rows fetched in order, the page and the cursor of the next one. */
export function toPage<R extends { cursorTs: string; id: string }, T>(
  rows: R[],
  limit: number,
  map: (r: R) => T,
): Page<T> {
  const more = rows.length > limit;
  const slice = more ? rows.slice(0, limit) : rows;
  const last = slice[slice.length - 1];
  return { items: slice.map(map), nextCursor: more && last ? encodeCursor({ ts: last.cursorTs, id: last.id }) : null };
}
