import type { Readable, Writable } from 'node:stream';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { ident } from '../db/tenant-server-admin';

// The tables of a store's database, walked the same way by a backup, a restore and an export: every
// ordinary table of the tenant schema (`public`), parents before children, read in one snapshot.

/** Recorded by the migration runner, not store data: a restore gets its own from the template or the runner. */
const NOT_DATA = new Set(['migrations']);

export interface TenantTable {
  /** Unqualified: every tenant table lives in `public`. */
  name: string;
  /** Stored (not generated) columns in their order in the table: what COPY reads and writes. */
  columns: string[];
}

export interface TenantSequence {
  name: string;
  lastValue: string;
  isCalled: boolean;
}

/**
 * Every data table of the store's schema in foreign-key order (a table after the tables it references, self
 * references ignored; tables in a reference cycle, which our schema has none of, come last in name order).
 */
export async function listTenantTables(client: pg.ClientBase): Promise<TenantTable[]> {
  const { rows } = await client.query<{ name: string; columns: string[]; refs: string[] | null }>(
    `SELECT c.relname AS name,
            array(SELECT a.attname::text FROM pg_attribute a
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                   ORDER BY a.attnum) AS columns,
            array(SELECT DISTINCT r.relname::text FROM pg_constraint f JOIN pg_class r ON r.oid = f.confrelid
                   WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid) AS refs
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
      ORDER BY c.relname`,
  );
  const tables = rows.filter((r) => !NOT_DATA.has(r.name));
  const ordered: TenantTable[] = [];
  const placed = new Set<string>();
  let pending = tables;
  while (pending.length) {
    const ready = pending.filter((t) =>
      (t.refs ?? []).every((r) => placed.has(r) || !pending.some((p) => p.name === r)),
    );
    const next = ready.length ? ready : pending; // a cycle: the rest in name order
    for (const t of next) {
      ordered.push({ name: t.name, columns: t.columns });
      placed.add(t.name);
    }
    pending = pending.filter((t) => !placed.has(t.name));
  }
  return ordered;
}

/** The sequences of the tenant schema and where they stand (serial / identity columns). */
export async function listTenantSequences(client: pg.ClientBase): Promise<TenantSequence[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind = 'S' ORDER BY c.relname`,
  );
  const out: TenantSequence[] = [];
  for (const { name } of rows) {
    const {
      rows: [s],
    } = await client.query<{ last_value: string; is_called: boolean }>(
      `SELECT last_value::text, is_called FROM public.${ident(name)}`,
    );
    out.push({ name, lastValue: s.last_value, isCalled: s.is_called });
  }
  return out;
}

/** The schema version the database's own `migrations` table records (0 without one). */
export async function tenantSchemaVersion(client: pg.ClientBase): Promise<number> {
  const { rows } = await client.query<{ v: number }>(
    `SELECT CASE WHEN to_regclass('public.migrations') IS NULL THEN 0
                 ELSE (SELECT coalesce(max(id), 0)::int FROM public.migrations) END AS v`,
  );
  return rows[0].v;
}

/**
 * Run `fn` inside one consistent read-only snapshot of the database (REPEATABLE READ READ ONLY): every
 * table it reads shows the same instant, however long the walk takes. Writers are not blocked.
 */
export async function inSnapshot<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

const columnList = (t: TenantTable) => t.columns.map(ident).join(', ');

/**
 * `COPY <table> TO STDOUT` in text format (portable across server versions), as a stream of the COPY
 * bytes. With `sql`, any COPY … TO STDOUT statement instead (an export's `COPY (SELECT row_to_json …)`).
 * The caller must consume the stream before the next query on `client`.
 */
export function copyOut(client: pg.ClientBase, table: TenantTable | { sql: string }): Readable {
  const sql = 'sql' in table ? table.sql : `COPY public.${ident(table.name)} (${columnList(table)}) TO STDOUT`;
  return client.query(copyTo(sql));
}

/** `COPY <table> FROM STDIN` (text format): write the bytes a copyOut of the same table gave. */
export function copyIn(client: pg.ClientBase, table: TenantTable): Writable {
  return client.query(copyFrom(`COPY public.${ident(table.name)} (${columnList(table)}) FROM STDIN`));
}
