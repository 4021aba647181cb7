import type pg from 'pg';
import { PgCode } from '../db/errors';
import { ident } from '../db/tenant-server-admin';
import type { TenantTable } from '../backups/tenant-tables';

// Change capture on a store database being moved: while the bulk copy reads one snapshot and the catch-up
// replays what changed since, row triggers on every tenant table record the primary key of each row written
// (not the row: the catch-up reads the row as it is then, so the order of the changes does not matter). For
// the switch, a statement trigger on every table refuses any write with our own SQLSTATE (STORE_MOVED), which
// the API answers as 503 TENANT_MIGRATING: nothing can land in the source once its last changes are copied.
// Everything lives in the schema `tenantry_move`, owned by the server's admin (the store's role cannot
// change it); dropping the schema removes every trigger with it.

export const CAPTURE_SCHEMA = 'tenantry_move';
/** Every trigger a move puts on a table is named so (drift leaves them out while the store is being moved). */
export const CAPTURE_TRIGGER_PREFIX = 'tenantry_move_';
const CAPTURE_TRIGGER = `${CAPTURE_TRIGGER_PREFIX}capture`;
const FROZEN_TRIGGER = `${CAPTURE_TRIGGER_PREFIX}frozen`;

/** A tenant table with its primary key (a move refuses a table without one: its rows could not be matched). */
export interface KeyedTable extends TenantTable {
  key: string[];
}

/** The primary key columns of each table (in key order). */
export async function withPrimaryKeys(client: pg.ClientBase, tables: TenantTable[]): Promise<KeyedTable[]> {
  const { rows } = await client.query<{ name: string; key: string[] }>(
    `SELECT c.relname AS name, array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
                                      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.n) AS key
       FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace s ON s.oid = c.relnamespace
      WHERE s.nspname = 'public' AND i.indisprimary`,
  );
  const keys = new Map(rows.map((r) => [r.name, r.key]));
  return tables.map((t) => {
    const key = keys.get(t.name);
    if (!key?.length) throw new Error(`table ${t.name} has no primary key: its changes could not be replayed`);
    return { ...t, key };
  });
}

const literal = (value: string) => `'${value.replace(/'/g, "''")}'`;

/** The schema, the change log and the two trigger functions (idempotent). */
const SETUP_SQL = `
CREATE SCHEMA IF NOT EXISTS ${CAPTURE_SCHEMA};
REVOKE ALL ON SCHEMA ${CAPTURE_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS ${CAPTURE_SCHEMA}.changes (id bigserial PRIMARY KEY, tbl text NOT NULL, pk jsonb NOT NULL);
CREATE OR REPLACE FUNCTION ${CAPTURE_SCHEMA}.capture() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  old_key jsonb;
  new_key jsonb;
BEGIN
  IF TG_OP <> 'INSERT' THEN
    SELECT jsonb_object_agg(c, to_jsonb(OLD) -> c) INTO old_key FROM unnest(TG_ARGV) c;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    SELECT jsonb_object_agg(c, to_jsonb(NEW) -> c) INTO new_key FROM unnest(TG_ARGV) c;
    INSERT INTO ${CAPTURE_SCHEMA}.changes (tbl, pk) VALUES (TG_TABLE_NAME, new_key);
  END IF;
  -- A deleted row, or the key an update changed away from.
  IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN
    INSERT INTO ${CAPTURE_SCHEMA}.changes (tbl, pk) VALUES (TG_TABLE_NAME, old_key);
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION ${CAPTURE_SCHEMA}.refuse() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  RAISE EXCEPTION 'this store''s database is being moved: writes are closed' USING ERRCODE = '${PgCode.STORE_MOVED}';
END $$;`;

/**
 * A writer holding one table and waiting for another we hold is a deadlock: our session detects it first (and
 * gives way, to try again) rather than the writer's, whose request would fail. Needs a superuser admin role;
 * without one the server's own deadlock_timeout decides.
 */
async function detectDeadlocksFirst(client: pg.ClientBase): Promise<void> {
  await client.query('SAVEPOINT tenantry_deadlock_timeout');
  try {
    await client.query('SET LOCAL deadlock_timeout = 50');
    await client.query('RELEASE SAVEPOINT tenantry_deadlock_timeout');
  } catch {
    await client.query('ROLLBACK TO SAVEPOINT tenantry_deadlock_timeout');
  }
}

/**
 * Lock every table of `names` in `mode`, all at once or not at all (NOWAIT, tried again every few ms until
 * `timeoutMs`, then 55P03 as a lock_timeout would): a writer in flight holds one table and wants another (the
 * next insert of its transaction, or a share of a parent to check a foreign key), so holding some tables while
 * waiting for the rest would deadlock it. Inside the caller's transaction.
 */
async function lockAllOrNothing(client: pg.ClientBase, names: string, mode: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await client.query('SAVEPOINT tenantry_lock');
    try {
      await client.query(`LOCK TABLE ${names} IN ${mode} MODE NOWAIT`);
      await client.query('RELEASE SAVEPOINT tenantry_lock');
      return;
    } catch (err) {
      await client.query('ROLLBACK TO SAVEPOINT tenantry_lock');
      if ((err as { code?: string }).code !== PgCode.LOCK_NOT_AVAILABLE || Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}

/**
 * Start recording changes: the log, and a row trigger on every table (a TRUNCATE, which rows cannot record, is
 * refused meanwhile). One transaction: the tables are locked first (all or nothing, see lockAllOrNothing), for at
 * most `lockTimeoutMs` (the caller tries again); writers wait only while the triggers are made.
 */
export async function startCapture(client: pg.ClientBase, tables: KeyedTable[], lockTimeoutMs: number): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(lockTimeoutMs))}`);
    await detectDeadlocksFirst(client);
    await client.query(SETUP_SQL);
    await lockAllOrNothing(
      client,
      tables.map((t) => `public.${ident(t.name)}`).join(', '),
      'SHARE ROW EXCLUSIVE',
      lockTimeoutMs,
    );
    for (const t of tables) {
      const table = `public.${ident(t.name)}`;
      await client.query(`DROP TRIGGER IF EXISTS ${CAPTURE_TRIGGER} ON ${table}`);
      await client.query(
        `CREATE TRIGGER ${CAPTURE_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON ${table}
           FOR EACH ROW EXECUTE FUNCTION ${CAPTURE_SCHEMA}.capture(${t.key.map(literal).join(', ')})`,
      );
      await client.query(`DROP TRIGGER IF EXISTS ${CAPTURE_TRIGGER}_truncate ON ${table}`);
      await client.query(
        `CREATE TRIGGER ${CAPTURE_TRIGGER}_truncate BEFORE TRUNCATE ON ${table}
           FOR EACH STATEMENT EXECUTE FUNCTION ${CAPTURE_SCHEMA}.refuse()`,
      );
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/**
 * Inside the caller's transaction: every table locked EXCLUSIVE (it waits for the writers in flight, and holds
 * new ones) and given a statement trigger refusing writes, visible once the transaction commits. Reads go on.
 * The store's new requests are held meanwhile (the migration gate): the writers in flight end within a few ms
 * and nothing new starts.
 */
export async function freezeWrites(client: pg.ClientBase, tables: KeyedTable[], lockTimeoutMs: number): Promise<void> {
  const names = `${tables.map((t) => `public.${ident(t.name)}`).join(', ')}, ${CAPTURE_SCHEMA}.changes`;
  await lockAllOrNothing(client, names, 'EXCLUSIVE', lockTimeoutMs);
  for (const t of tables)
    await client.query(
      `CREATE TRIGGER ${FROZEN_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE ON public.${ident(t.name)}
         FOR EACH STATEMENT EXECUTE FUNCTION ${CAPTURE_SCHEMA}.refuse()`,
    );
}

/** The writes refused by freezeWrites open again (the switch could not be made; the capture goes on). */
export async function unfreezeWrites(client: pg.ClientBase, tables: KeyedTable[]): Promise<void> {
  for (const t of tables) await client.query(`DROP TRIGGER IF EXISTS ${FROZEN_TRIGGER} ON public.${ident(t.name)}`);
}

/** Undo everything: the store's database as it was before the move (writes open again). Idempotent. */
export async function removeCapture(client: pg.ClientBase): Promise<void> {
  await client.query(`DROP SCHEMA IF EXISTS ${CAPTURE_SCHEMA} CASCADE`);
}

/**
 * After the switch, on the database left behind: the change log and its row triggers go, the refusal stays
 * (a session an instance still held must not write into a database nobody reads any more).
 */
export async function stopCaptureKeepFrozen(client: pg.ClientBase, tables: KeyedTable[]): Promise<void> {
  for (const t of tables) {
    const table = `public.${ident(t.name)}`;
    await client.query(`DROP TRIGGER IF EXISTS ${CAPTURE_TRIGGER} ON ${table}`);
  }
  await client.query(`DROP TABLE IF EXISTS ${CAPTURE_SCHEMA}.changes`);
}

/** Changes recorded and not yet replayed (an estimate is enough: it decides when to switch). */
export async function pendingChanges(client: pg.ClientBase): Promise<number> {
  const { rows } = await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${CAPTURE_SCHEMA}.changes`);
  return rows[0].n;
}

const keyList = (t: KeyedTable) => t.key.map(ident).join(', ');

/**
 * Replay up to `limit` recorded changes onto the target: the keys are taken from the log (deleted there), each
 * row read from the source as it is now, and on the target the rows of those keys deleted and the current ones
 * inserted, in one target transaction (replica mode: foreign keys are the source's business, the rows come
 * from a consistent source). Idempotent: when the target's commit is not followed by the source's, the same
 * keys are replayed again. `inTransaction`: the source is inside the caller's transaction (the switch), whose
 * commit then removes the keys from the log. Returns how many log entries it consumed.
 */
export async function replayChanges(
  source: pg.ClientBase,
  target: pg.ClientBase,
  tables: KeyedTable[],
  limit: number,
  inTransaction = false,
): Promise<number> {
  if (!inTransaction) await source.query('BEGIN');
  try {
    const { rows } = await source.query<{ tbl: string; pk: Record<string, unknown> }>(
      `DELETE FROM ${CAPTURE_SCHEMA}.changes
        WHERE id IN (SELECT id FROM ${CAPTURE_SCHEMA}.changes ORDER BY id LIMIT $1)
        RETURNING tbl, pk`,
      [limit],
    );
    if (rows.length) {
      const byTable = new Map<string, Map<string, Record<string, unknown>>>();
      for (const r of rows) {
        let keys = byTable.get(r.tbl);
        if (!keys) byTable.set(r.tbl, (keys = new Map()));
        keys.set(JSON.stringify(r.pk), r.pk);
      }
      const work: { table: KeyedTable; keys: string; current: string }[] = [];
      for (const table of tables) {
        const keys = byTable.get(table.name);
        if (!keys) continue;
        const keyJson = JSON.stringify([...keys.values()]);
        const name = `public.${ident(table.name)}`;
        const { rows: current } = await source.query<{ rows: unknown[] | null }>(
          `SELECT jsonb_agg(to_jsonb(t)) AS rows FROM ${name} t
            WHERE (${keyList(table)}) IN (SELECT ${keyList(table)} FROM jsonb_populate_recordset(NULL::${name}, $1::jsonb))`,
          [keyJson],
        );
        work.push({ table, keys: keyJson, current: JSON.stringify(current[0].rows ?? []) });
      }
      await target.query('BEGIN');
      try {
        for (const { table, keys, current } of work) {
          const name = `public.${ident(table.name)}`;
          const columns = table.columns.map(ident).join(', ');
          await target.query(
            `DELETE FROM ${name} WHERE (${keyList(table)}) IN (SELECT ${keyList(table)} FROM jsonb_populate_recordset(NULL::${name}, $1::jsonb))`,
            [keys],
          );
          await target.query(
            `INSERT INTO ${name} (${columns}) SELECT ${columns} FROM jsonb_populate_recordset(NULL::${name}, $1::jsonb)`,
            [current],
          );
        }
        await target.query('COMMIT');
      } catch (err) {
        await target.query('ROLLBACK').catch(() => {});
        throw err;
      }
    }
    if (!inTransaction) await source.query('COMMIT');
    return rows.length;
  } catch (err) {
    if (!inTransaction) await source.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
