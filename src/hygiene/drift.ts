import type pg from 'pg';
import { loadMigrationFiles } from 'postgres-migrations';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { migrationsDir } from '../db/migrate';
import { withClient } from '../db/pg-client';
import { ident } from '../db/tenant-server-admin';
import { tenantServers, type TenantServer } from '../db/tenant-servers';
import type { TenantConnection } from '../db/tenant-types';
import { secretContext } from '../lib/crypto';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { mustBePublic } from '../lib/network-guard';
import { Semaphore } from '../lib/semaphore';
import { fleetTargetVersion, tenantMigrationsDir } from '../migrations/migration-runs.service';
import { CAPTURE_TRIGGER_PREFIX } from '../moves/change-capture';
import { ACTIVE_MOVE_STATES } from '../moves/moves.service';
import { ensureTemplate, TEMPLATE_OWNER } from '../provisioning/templates';
import { tenantPgConfig } from '../provisioning/tenant-db';

/**
 * Drift: per store, whether its database is what the code expects — its `migrations` table against the shipped
 * tenant migrations (missing, recorded but not shipped, changed checksum), and its catalogue (tables, columns and
 * types, indexes, constraints, triggers, routines, owners, privileges) against the template of the current schema
 * (templates.ts), as a fingerprint: ONE query per store database answers the md5 of its catalogue facts, the
 * facts themselves only when the md5 differs from the template's, and its migrations table. An unchanged store
 * costs a connection and that query.
 *
 * A check is kept in the master DB (drift_checks, one drift_check_stores row per store): each store is recorded
 * as it is done, so a check cut off (the process stopped, the command killed) is resumed from its pending rows.
 */

/** What a check needs: the API's context, or what the command line opens. */
export type HygieneDeps = Pick<AppContext, 'config' | 'masterUrl' | 'master' | 'encryptor' | 'adminPools' | 'queues'>;

export const DRIFT_KINDS = ['missing_migrations', 'changed_migration', 'catalog_differs', 'unreachable'] as const;
export type DriftKind = (typeof DRIFT_KINDS)[number];
export interface DriftFinding {
  kind: DriftKind;
  detail: string;
}
export interface StoreDrift extends DriftFinding {
  storeId: string;
}

/** Differences listed per store at most (a database far from the schema says so in its last line). */
const MAX_FINDINGS = 50;
const SELF = "the store's role";
const CHECKS_KEPT_DAYS = 30;

/**
 * The catalogue facts of the database's `public` schema, keyed by what an operator reads (`index products_x_idx`,
 * `column orders.note`), owners and grantees written relative to the connected role (`the store's role`) so a
 * store and the template (read as its owner) compare equal. $1: the expected md5 (the facts come back only when
 * it differs).
 */
const FACTS_SQL = `
WITH me AS (SELECT oid FROM pg_roles WHERE rolname = current_user),
rels AS (
  SELECT c.oid, c.relname, c.relkind, c.relowner, c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
),
facts (k, v) AS (
  SELECT CASE r.relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' ELSE 'table ' END || r.relname,
         jsonb_build_object(
           'owner', CASE WHEN r.relowner = (SELECT oid FROM me) THEN '${SELF.replace("'", "''")}' ELSE pg_get_userbyid(r.relowner) END,
           'privileges', (SELECT coalesce(jsonb_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' WHEN a.grantee = (SELECT oid FROM me) THEN '${SELF.replace("'", "''")}' ELSE pg_get_userbyid(a.grantee) END || ' ' || a.privilege_type), '[]')
                            FROM aclexplode(coalesce(r.relacl, acldefault(CASE WHEN r.relkind = 'S' THEN 's' ELSE 'r' END::"char", r.relowner))) a))
    FROM rels r
  UNION ALL
  SELECT 'column ' || r.relname || '.' || a.attname,
         jsonb_build_object('type', format_type(a.atttypid, a.atttypmod), 'not null', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid))
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
   WHERE r.relkind <> 'S'
  UNION ALL
  SELECT 'index ' || i.relname, jsonb_build_object('definition', pg_get_indexdef(i.oid))
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN rels r ON r.oid = x.indrelid
  UNION ALL
  SELECT 'constraint ' || r.relname || '.' || c.conname, jsonb_build_object('definition', pg_get_constraintdef(c.oid))
    FROM pg_constraint c JOIN rels r ON r.oid = c.conrelid
  UNION ALL
  SELECT 'trigger ' || r.relname || '.' || t.tgname, jsonb_build_object('definition', pg_get_triggerdef(t.oid))
    FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT 'routine ' || p.oid::regprocedure::text,
         jsonb_build_object('owner', CASE WHEN p.proowner = (SELECT oid FROM me) THEN '${SELF.replace("'", "''")}' ELSE pg_get_userbyid(p.proowner) END, 'body', md5(coalesce(p.prosrc, '')))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
  UNION ALL
  SELECT 'extension ' || e.extname, jsonb_build_object('version', e.extversion) FROM pg_extension e WHERE e.extname <> 'plpgsql'
),
agg AS (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) AS facts FROM facts)
SELECT md5(facts::text) AS fingerprint, CASE WHEN md5(facts::text) IS DISTINCT FROM $1 THEN facts END AS facts`;

/** The same, with the migrations table (id, name, hash) in the one query. */
const STORE_SQL = `${FACTS_SQL},
  (SELECT coalesce(jsonb_agg(jsonb_build_array(m.id, m.name, m.hash) ORDER BY m.id), '[]'::jsonb) FROM migrations m) AS migrations
FROM agg`;

type Facts = Record<string, Record<string, unknown>>;
interface Reference {
  fingerprint: string;
  facts: Facts;
}

interface ShippedMigration {
  id: number;
  name: string;
  fileName: string;
  hash: string;
}

const shipped = new Map<string, Promise<ShippedMigration[]>>();

/** The migrations of `dir` as postgres-migrations records them (its own table-creating file included). */
function shippedMigrations(dir: string): Promise<ShippedMigration[]> {
  let p = shipped.get(dir);
  if (!p) {
    p = loadMigrationFiles(dir).then((files) =>
      files.map((f) => ({ id: f.id, name: f.name, fileName: f.fileName, hash: f.hash })),
    );
    p.catch(() => shipped.delete(dir));
    shipped.set(dir, p);
  }
  return p;
}

/** Per template database (server and schema digest): read once per process, templates never change. */
const references = new Map<string, Promise<Reference>>();

/**
 * The catalogue of the current schema's template on `server`, read as the template's owner (whose objects the
 * store's role gets in a copy). Its migrations are the code's sql/tenant: a check against another
 * TENANT_MIGRATIONS_DIR has no reference (undefined) and compares migrations tables only.
 */
async function referenceOf(deps: HygieneDeps, server: TenantServer): Promise<Reference | undefined> {
  if (tenantMigrationsDir(deps.config) !== migrationsDir('tenant')) return undefined;
  const template = await ensureTemplate(server);
  const key = `${server.key}/${template}`;
  let p = references.get(key);
  if (!p) {
    const u = new URL(server.adminUrl);
    u.pathname = `/${template}`;
    p = withClient(u.toString(), async (client) => {
      // Short: a CREATE DATABASE … TEMPLATE waits for this session to leave.
      await client.query(`SET ROLE ${ident(TEMPLATE_OWNER)}`);
      const { rows } = await client.query<Reference>(`${FACTS_SQL} FROM agg`, [null]);
      return rows[0];
    });
    p.catch(() => references.delete(key));
    references.set(key, p);
  }
  return p;
}

const sameValue = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
const shown = (v: unknown) => (Array.isArray(v) ? (v.length ? v.join(', ') : 'none') : String(v));

/** What differs between a store's facts and the reference's, in words. */
export function describeCatalogDiff(got: Facts, want: Facts): string[] {
  const out: string[] = [];
  for (const key of Object.keys(got).sort()) {
    if (!(key in want)) out.push(`${key} not in the schema`);
  }
  for (const key of Object.keys(want).sort()) {
    if (!(key in got)) {
      out.push(`${key} missing`);
      continue;
    }
    const [g, w] = [got[key], want[key]];
    for (const attr of Object.keys(w)) {
      if (sameValue(g[attr], w[attr])) continue;
      if (attr === 'privileges') {
        const [gs, ws] = [g[attr] as string[], w[attr] as string[]];
        const extra = gs.filter((p) => !ws.includes(p));
        const lacking = ws.filter((p) => !gs.includes(p));
        if (extra.length) out.push(`${key}: ${extra.join(', ')} granted, not in the schema`);
        if (lacking.length) out.push(`${key}: ${lacking.join(', ')} missing`);
      } else {
        out.push(`${key}: ${attr} is ${shown(g[attr])}, the schema says ${shown(w[attr])}`);
      }
    }
  }
  return out;
}

/** What differs between a store's migrations table and the shipped files, in words. */
export function describeMigrationDiff(rows: [number, string, string][], files: ShippedMigration[]): DriftFinding[] {
  const out: DriftFinding[] = [];
  const byId = new Map(rows.map(([id, name, hash]) => [id, { name, hash }]));
  for (const f of files) {
    const row = byId.get(f.id);
    if (!row) out.push({ kind: 'missing_migrations', detail: `migration ${f.fileName} not applied` });
    else if (row.hash !== f.hash || row.name !== f.name)
      out.push({
        kind: 'changed_migration',
        detail: `migration ${f.fileName}: the checksum recorded in the database differs from the shipped file`,
      });
  }
  const ids = new Set(files.map((f) => f.id));
  for (const [id, name] of rows) {
    if (!ids.has(id))
      out.push({
        kind: 'changed_migration',
        detail: `migration ${id} (${name}) applied, but not shipped with this code`,
      });
  }
  return out;
}

interface DriftStoreRow {
  storeId: string;
  server: string;
  mode: string;
  credentials: string;
}

/** Compare one store's database (never throws: an unreachable database is a finding). */
export async function checkStore(
  deps: HygieneDeps,
  store: DriftStoreRow,
  reference: Reference | undefined,
  files: ShippedMigration[],
): Promise<{ findings: DriftFinding[]; fingerprint: string | null }> {
  let result: { fingerprint: string; facts: Facts | null; migrations: [number, string, string][] | null };
  try {
    const connection = deps.encryptor.decryptJson<TenantConnection>(
      store.credentials,
      secretContext.storeCredentials(store.storeId),
    );
    const config: pg.ClientConfig = {
      ...tenantPgConfig(connection, { publicOnly: mustBePublic(store.mode, deps.config.tenant) }),
      connectionTimeoutMillis: 5000,
      statement_timeout: 15_000,
    };
    result = await withClient(config, async (client) => {
      const expected = reference?.fingerprint ?? null;
      try {
        return (await client.query(STORE_SQL, [expected])).rows[0];
      } catch (err) {
        // No migrations table at all: the one query names it, so it fails planning; the catalogue alone then.
        if ((err as { code?: string }).code !== '42P01') throw err;
        return { ...(await client.query(`${FACTS_SQL} FROM agg`, [expected])).rows[0], migrations: null };
      }
    });
  } catch (err) {
    const why = (err as Error).message.slice(0, 200);
    return { findings: [{ kind: 'unreachable', detail: `the database could not be read: ${why}` }], fingerprint: null };
  }
  const findings: DriftFinding[] = result.migrations
    ? describeMigrationDiff(result.migrations, files)
    : [{ kind: 'missing_migrations', detail: 'no migrations table: no migration is recorded' }];
  // A store behind (or ahead of) the shipped migrations differs from the template by those: its migrations say it.
  if (reference && findings.length === 0 && result.facts) {
    for (const detail of describeCatalogDiff(result.facts, reference.facts))
      findings.push({ kind: 'catalog_differs', detail });
  }
  if (findings.length > MAX_FINDINGS) {
    const more = findings.length - MAX_FINDINGS + 1;
    findings.splice(MAX_FINDINGS - 1, Infinity, {
      kind: findings[MAX_FINDINGS - 1].kind,
      detail: `… and ${more} more`,
    });
  }
  return { findings, fingerprint: result.fingerprint };
}

/**
 * Stores compared at once per tenant server when the caller does not say: a read of the catalogue is lighter than
 * a migration (a run's default is 4), and a connection's start-up is most of a store's time.
 */
export const DRIFT_PER_SERVER = 8;

export interface DriftOptions {
  /** Stores checked at once per tenant server (default DRIFT_PER_SERVER). */
  perServer?: number;
  /** Resume this check (its pending stores) instead of starting a new one. */
  resume?: string;
  /** Called after each store (the command line's progress). */
  onStore?: (done: number, total: number) => void;
}

export interface DriftReport {
  checkId: string;
  targetVersion: number;
  checked: number;
  differing: number;
  ms: number;
  items: StoreDrift[];
}

const isUuid = (s: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

/** A new check: a row per active store with a ready database (what a migration run covers), in the master DB. */
async function createCheck(deps: HygieneDeps, actor: string, target: number): Promise<string> {
  return deps.master.sequelize.transaction(async (t) => {
    const [row] = await deps.master.sequelize.query<{ id: string }>(
      `INSERT INTO drift_checks (target_version, requested_by) VALUES ($1, $2) RETURNING id`,
      { bind: [target, actor], type: QueryTypes.SELECT, transaction: t },
    );
    // Older checks are of older code and older databases: kept a while for reference, not for ever.
    await deps.master.sequelize.query(
      `DELETE FROM drift_checks WHERE created_at < now() - make_interval(days => ${CHECKS_KEPT_DAYS})`,
      { transaction: t },
    );
    await deps.master.sequelize.query(
      `INSERT INTO drift_check_stores (check_id, store_id, server)
       SELECT $1, d.store_id, CASE WHEN d.mode = 'external' THEN 'external' ELSE d.server END
         FROM store_databases d JOIN stores s ON s.id = d.store_id
        WHERE s.status = 'active' AND d.status = 'ready'`,
      { bind: [row.id], transaction: t },
    );
    return row.id;
  });
}

/**
 * Run a drift check (or resume one) to its end: every pending store compared, each server `perServer` stores
 * at a time (servers side by side; external stores count as one server), each recorded as done. Answers the
 * stores that differ. A resumed check keeps the results of the stores done before.
 */
export async function runDriftCheck(deps: HygieneDeps, actor: string, opts: DriftOptions = {}): Promise<DriftReport> {
  const started = Date.now();
  let checkId: string;
  if (opts.resume) {
    if (!isUuid(opts.resume)) throw fail(ErrorCode.NOT_FOUND, 'No such drift check');
    const [head] = await deps.master.sequelize.query<{ id: string }>(`SELECT id FROM drift_checks WHERE id = $1`, {
      bind: [opts.resume],
      type: QueryTypes.SELECT,
    });
    if (!head) throw fail(ErrorCode.NOT_FOUND, 'No such drift check');
    checkId = head.id;
  } else {
    checkId = await createCheck(deps, actor, fleetTargetVersion(deps.config));
  }
  const files = await shippedMigrations(tenantMigrationsDir(deps.config));
  const pending = await deps.master.sequelize.query<DriftStoreRow>(
    `SELECT c.store_id AS "storeId", c.server, d.mode, d.credentials
       FROM drift_check_stores c JOIN store_databases d ON d.store_id = c.store_id
      WHERE c.check_id = $1 AND c.state = 'pending' ORDER BY c.server, c.store_id`,
    { bind: [checkId], type: QueryTypes.SELECT },
  );
  const [{ total }] = await deps.master.sequelize.query<{ total: number }>(
    `SELECT count(*)::int AS total FROM drift_check_stores WHERE check_id = $1`,
    { bind: [checkId], type: QueryTypes.SELECT },
  );
  const servers = new Map(tenantServers(deps).map((s) => [s.key, s]));
  const first = tenantServers(deps)[0];
  const moving = await storesBeingMoved(deps);
  const bounds = new Map<string, Semaphore>();
  const perServer = opts.perServer ?? DRIFT_PER_SERVER;
  let done = total - pending.length;
  await Promise.all(
    pending.map((store) => {
      let bound = bounds.get(store.server);
      if (!bound) bounds.set(store.server, (bound = new Semaphore(perServer, Number.MAX_SAFE_INTEGER)));
      return bound.run(async () => {
        const t0 = Date.now();
        // External stores against the first server's template (same schema files; the Postgres version may differ).
        const server = servers.get(store.server) ?? first;
        const reference = await referenceOf(deps, server).catch((err: Error) => {
          logger.warn({ server: server.key, err: err.message }, 'drift: no template to compare catalogues with');
          return undefined;
        });
        const checked = await checkStore(deps, store, reference, files);
        const { fingerprint } = checked;
        const findings = moving.has(store.storeId) ? withoutMoveCapture(checked.findings) : checked.findings;
        await deps.master.sequelize.query(
          `UPDATE drift_check_stores SET state = 'done', findings = $3::jsonb, fingerprint = $4, ms = $5, checked_at = now()
            WHERE check_id = $1 AND store_id = $2`,
          { bind: [checkId, store.storeId, JSON.stringify(findings), fingerprint, Date.now() - t0] },
        );
        opts.onStore?.(++done, total);
      });
    }),
  );
  await deps.master.sequelize.query(
    `UPDATE drift_checks SET state = 'completed', finished_at = now() WHERE id = $1 AND state = 'running'`,
    { bind: [checkId] },
  );
  return driftReport(deps, checkId, Date.now() - started);
}

/** Stores with a move under way (src/moves): their database carries the move's change-capture triggers meanwhile. */
async function storesBeingMoved(deps: HygieneDeps): Promise<Set<string>> {
  const rows = await deps.master.sequelize.query<{ storeId: string }>(
    `SELECT store_id AS "storeId" FROM store_moves WHERE state = ANY($1::text[])`,
    { bind: [ACTIVE_MOVE_STATES], type: QueryTypes.SELECT },
  );
  return new Set(rows.map((r) => r.storeId));
}

/** A moving store's findings without the move's own triggers (the same triggers on a store not moving are reported). */
const withoutMoveCapture = (findings: DriftFinding[]) =>
  findings.filter((f) => !(f.kind === 'catalog_differs' && f.detail.includes(`.${CAPTURE_TRIGGER_PREFIX}`)));

/** A check's stores that differ, from its rows. */
export async function driftReport(deps: HygieneDeps, checkId: string, ms = 0): Promise<DriftReport> {
  const [head] = await deps.master.sequelize.query<{ targetVersion: number; checked: number }>(
    `SELECT target_version AS "targetVersion", (SELECT count(*) FROM drift_check_stores s WHERE s.check_id = c.id AND s.state = 'done')::int AS checked
       FROM drift_checks c WHERE id = $1`,
    { bind: [checkId], type: QueryTypes.SELECT },
  );
  const rows = await deps.master.sequelize.query<{ storeId: string; findings: DriftFinding[] }>(
    `SELECT store_id AS "storeId", findings FROM drift_check_stores
      WHERE check_id = $1 AND state = 'done' AND jsonb_array_length(findings) > 0 ORDER BY server, store_id`,
    { bind: [checkId], type: QueryTypes.SELECT },
  );
  return {
    checkId,
    targetVersion: head.targetVersion,
    checked: head.checked,
    differing: rows.length,
    ms,
    items: rows.flatMap((r) => r.findings.map((f) => ({ storeId: r.storeId, kind: f.kind, detail: f.detail }))),
  };
}
