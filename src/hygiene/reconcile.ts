import type pg from 'pg';
import { QueryTypes } from 'sequelize';
import { auditEvent } from '../db/audit';
import { schemaDigest } from '../db/migrate';
import { databaseOfRoleSql, ident } from '../db/tenant-server-admin';
import { tenantServers, type TenantServer } from '../db/tenant-servers';
import type { TenantConnection } from '../db/tenant-types';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import { LOCK_KEY as TEMPLATE_LOCK_KEY, REFILL_LOCK_KEY, TEMPLATE_PREFIX, warmName } from '../provisioning/templates';
import { provisioningJobId, QueueName } from '../queue/queues';
import type { HygieneDeps } from './drift';

/**
 * Reconcile: every database and role on every tenant server whose name has this deployment's managed prefix
 * (TENANT_DB_PREFIX), and the tenant templates, against the registry (store_databases, stores) and the queue.
 *
 * A dry run by default. `apply` makes the safe repairs only — nothing that can lose a store's data:
 *   - ownership_differs, connect_differs: the database back to its store's role, CONNECT to that role only
 *     (what provisioning sets: databaseOfRoleSql);
 *   - stuck_provisioning: the store's provisioning job queued again (every step of it is idempotent);
 *   - orphaned_role (a managed-prefix role owning no database, in no registry row): dropped (DROP ROLE refuses a
 *     role that still owns something);
 *   - warm_pool_leftover, interrupted_template_build, stale_template: dropped (they never hold a store's data;
 *     under the lock their builder takes, so one being made is left alone);
 * and with `dropOrphans` as well, orphaned_database: a managed-prefix database that no registry row names,
 * older than the grace period, dropped with its role — audited, one entry per database.
 * missing_database, replaced_database_overdue and unreachable_server are only reported.
 *
 * A database a restore replaced (store_restores.replaced_database, not yet dropped) is no orphan: it is kept,
 * closed to connections, until its drop date (the backup's retention), listed in `kept`, and never dropped here.
 * Past that date it is a replaced_database_overdue finding, still not dropped here: the retention's task
 * (expire-backups) drops it and records the drop.
 *
 * A database's age is its PG_VERSION file's modification time (pg_stat_file, written when the database is
 * created or copied; needs the admin role to be a superuser or have pg_read_server_files): a database whose age
 * cannot be read is reported but never dropped. Roles have no age in Postgres: a managed-prefix role is an orphan
 * only when no registry row names it and it owns no database (provisioning writes the registry row before it
 * makes the role, so a role being made is never one).
 */

export const RECONCILE_KINDS = [
  'orphaned_database',
  'orphaned_role',
  'missing_database',
  'stuck_provisioning',
  'ownership_differs',
  'connect_differs',
  'warm_pool_leftover',
  'interrupted_template_build',
  'stale_template',
  'replaced_database_overdue',
  'unreachable_server',
] as const;
export type ReconcileKind = (typeof RECONCILE_KINDS)[number];

export interface ReconcileFinding {
  kind: ReconcileKind;
  /** host:port of the tenant server. */
  server: string;
  /** The database, role or store the finding is about. */
  name: string;
  storeId: string | null;
  detail: string;
  /** What apply does about it (null: nothing, report only). */
  repair: string | null;
  /** Whether it was repaired by this call (false on a dry run, or when the repair failed or needs dropOrphans). */
  repaired: boolean;
  /** Why a repair was not made when apply was asked. */
  error?: string;
}

export interface ReconcileOptions {
  apply?: boolean;
  /** With apply: also drop orphaned databases (and their roles). */
  dropOrphans?: boolean;
  /** Databases younger than this are never orphans; stores in provisioning younger than this are never stuck. */
  graceMinutes?: number;
}

export interface ReconcileReport {
  applied: boolean;
  dropOrphans: boolean;
  graceMinutes: number;
  prefix: string;
  servers: { server: string; reachable: boolean; databases: number; roles: number }[];
  counts: Record<ReconcileKind, number>;
  findings: ReconcileFinding[];
  /** The findings repaired by this call. */
  repairs: { kind: ReconcileKind; server: string; name: string; action: string }[];
  /** Databases a restore replaced, kept until their drop date (not findings). */
  kept: { server: string; name: string; storeId: string; until: string }[];
}

export const DEFAULT_GRACE_MINUTES = 60;
const REPORTS_KEPT_DAYS = 90;

interface RegistryEntry {
  storeId: string;
  server: string;
  database: string;
  role: string;
  storeStatus: string;
  dbStatus: string;
}

/** The managed databases of the registry (every store status: a deleted store's database is kept until purged). */
async function registry(deps: HygieneDeps): Promise<RegistryEntry[]> {
  const rows = await deps.master.sequelize.query<{
    storeId: string;
    server: string;
    databaseName: string | null;
    credentials: string;
    storeStatus: string;
    dbStatus: string;
  }>(
    `SELECT d.store_id AS "storeId", d.server, d.database_name AS "databaseName", d.credentials, s.status AS "storeStatus", d.status AS "dbStatus"
       FROM store_databases d JOIN stores s ON s.id = d.store_id WHERE d.mode = 'managed'`,
    { type: QueryTypes.SELECT },
  );
  return rows
    .map((r) => {
      let database = r.databaseName;
      let role = r.databaseName;
      try {
        const c = deps.encryptor.decryptJson<TenantConnection>(
          r.credentials,
          secretContext.storeCredentials(r.storeId),
        );
        database = c.database;
        role = c.user;
      } catch {
        // Under a key this process lacks: provisioning names the role after the database.
      }
      return {
        storeId: r.storeId,
        server: r.server,
        database: database ?? '',
        role: role ?? '',
        storeStatus: r.storeStatus,
        dbStatus: r.dbStatus,
      };
    })
    .filter((r) => r.database);
}

interface ServerDatabase {
  datname: string;
  owner: string;
  /** Grantees other than the owner and what they hold ('PUBLIC' for everyone). */
  grants: { grantee: string; privileges: string[] }[];
  ageMinutes: number | null;
}

const DATABASES_SQL = (age: string) => `
SELECT d.datname, pg_get_userbyid(d.datdba) AS owner, ${age} AS "ageMinutes",
       (SELECT coalesce(jsonb_agg(jsonb_build_object('grantee', g.grantee, 'privileges', g.privileges) ORDER BY g.grantee), '[]'::jsonb)
          FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END AS grantee, array_agg(a.privilege_type ORDER BY a.privilege_type) AS privileges
                  FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a WHERE a.grantee <> d.datdba GROUP BY 1) g) AS grants
  FROM pg_database d
 WHERE ($1 <> '' AND starts_with(d.datname, $1)) OR d.datname = ANY($2::text[]) OR starts_with(d.datname, '${TEMPLATE_PREFIX}')`;
const AGE_SQL = `(extract(epoch FROM now() - (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification) / 60)::float8`;

/** Every database of interest on the server: the prefix's, the registry's, the templates. */
async function serverDatabases(client: pg.ClientBase, prefix: string, names: string[]): Promise<ServerDatabase[]> {
  try {
    return (await client.query<ServerDatabase>(DATABASES_SQL(AGE_SQL), [prefix, names])).rows;
  } catch (err) {
    // 42501: the admin role may not read files; ages are then unknown (nothing is old enough to drop).
    if ((err as { code?: string }).code !== '42501') throw err;
    return (await client.query<ServerDatabase>(DATABASES_SQL('NULL::float8'), [prefix, names])).rows;
  }
}

const emptyCounts = () => Object.fromEntries(RECONCILE_KINDS.map((k) => [k, 0])) as Record<ReconcileKind, number>;

/** The live states of a BullMQ job: anything else (completed, failed, gone) will not provision the store. */
const LIVE_JOB = ['active', 'waiting', 'delayed', 'prioritized', 'waiting-children'];

/**
 * Compare, and with `apply` repair (see the module's comment). Persisted in reconcile_reports (the latest one's
 * counts are on /metrics); an apply is audited (`fleet.reconciled`), each dropped database on its own.
 */
export async function reconcile(
  deps: HygieneDeps,
  actor: { userId: string | null; label: string },
  opts: ReconcileOptions = {},
): Promise<ReconcileReport> {
  const apply = opts.apply === true;
  const dropOrphans = apply && opts.dropOrphans === true;
  const grace = opts.graceMinutes ?? DEFAULT_GRACE_MINUTES;
  const prefix = deps.config.provisioning.databasePrefix;
  const report: ReconcileReport = {
    applied: apply,
    dropOrphans,
    graceMinutes: grace,
    prefix,
    servers: [],
    counts: emptyCounts(),
    findings: [],
    repairs: [],
    kept: [],
  };
  // An empty prefix would make every database on the server look managed: nothing is listed as an orphan then.
  const prefixed = (name: string) => prefix.length > 0 && name.startsWith(prefix);
  const entries = await registry(deps);
  const replaced = await replacedDatabases(deps);

  for (const server of tenantServers(deps)) {
    const mine = entries.filter((e) => e.server === server.key);
    try {
      await deps.adminPools.withAdmin(server.adminUrl, (client) =>
        reconcileServer(
          deps,
          client,
          server,
          mine,
          entries,
          { actor, apply, dropOrphans, grace, prefix, prefixed, replaced },
          report,
        ),
      );
    } catch (err) {
      report.servers.push({ server: server.key, reachable: false, databases: 0, roles: 0 });
      report.findings.push({
        kind: 'unreachable_server',
        server: server.key,
        name: server.key,
        storeId: null,
        detail: `the server could not be listed: ${(err as Error).message.slice(0, 200)}`,
        repair: null,
        repaired: false,
      });
    }
  }
  // Stores registered on a server no longer in TENANT_SERVERS (taken out after a drain, say): no server listed
  // above holds their databases, and nothing here can reach them.
  const configured = new Set(tenantServers(deps).map((s) => s.key));
  for (const e of entries)
    if (!configured.has(e.server) && e.dbStatus === 'ready')
      report.findings.push({
        kind: 'missing_database',
        server: e.server,
        name: e.database,
        storeId: e.storeId,
        detail: `store ${e.storeId} (${e.storeStatus}) is registered on ${e.server}, which is not one of TENANT_SERVERS: its database cannot be reached`,
        repair: null,
        repaired: false,
      });
  await stuckProvisioning(deps, grace, apply, report);

  for (const f of report.findings) {
    report.counts[f.kind]++;
    if (f.repaired && f.repair) report.repairs.push({ kind: f.kind, server: f.server, name: f.name, action: f.repair });
  }
  // Kept for REPORTS_KEPT_DAYS (a daily dry run each day, and the calls of operators).
  await deps.master.sequelize.query(
    `INSERT INTO reconcile_reports (applied, requested_by, counts, report) VALUES ($1, $2, $3::jsonb, $4::jsonb)`,
    { bind: [apply, actor.label, JSON.stringify(report.counts), JSON.stringify(report)] },
  );
  await deps.master.sequelize.query(
    `DELETE FROM reconcile_reports WHERE created_at < now() - make_interval(days => ${REPORTS_KEPT_DAYS})`,
  );
  if (apply && report.repairs.length) {
    await auditEvent(deps.master, {
      actorUserId: actor.userId,
      action: 'fleet.reconciled',
      targetType: 'fleet',
      targetId: 'tenant-servers',
      data: { by: actor.label, dropOrphans, repairs: report.repairs },
    });
  }
  return report;
}

interface ServerScope {
  actor: { userId: string | null; label: string };
  apply: boolean;
  dropOrphans: boolean;
  grace: number;
  prefix: string;
  prefixed: (name: string) => boolean;
  replaced: ReplacedDatabase[];
}

interface ReplacedDatabase {
  storeId: string;
  server: string;
  database: string;
  /** Null for the database a restore is filling now (`restoring`). */
  dropAfter: Date | null;
  restoring: boolean;
}

/**
 * The databases restores replaced and the retention has not dropped yet, and those a queued or running
 * restore is filling (touched within a day: a restore whose worker died long ago leaves an orphan like any other).
 */
async function replacedDatabases(deps: HygieneDeps): Promise<ReplacedDatabase[]> {
  return deps.master.sequelize.query<ReplacedDatabase>(
    `SELECT store_id AS "storeId", server, replaced_database AS database, drop_after AS "dropAfter", false AS restoring
       FROM store_restores
      WHERE state = 'completed' AND replaced_database IS NOT NULL AND dropped_at IS NULL AND server IS NOT NULL
     UNION ALL
     SELECT store_id, server, new_database, NULL, true
       FROM store_restores
      WHERE state IN ('queued', 'running') AND new_database IS NOT NULL AND server IS NOT NULL
        AND updated_at > now() - interval '1 day'
     UNION ALL
     -- A moved store's old database, kept closed until its drop date (tend-store-moves drops it).
     SELECT store_id, source_server, source_database, drop_after, false
       FROM store_moves
      WHERE state = 'completed' AND dropped_at IS NULL AND drop_after IS NOT NULL
     UNION ALL
     -- The target a move is filling (the same name as the store's on another server, or a suffixed one).
     SELECT store_id, target_server, target_database, NULL, true
       FROM store_moves
      WHERE state IN ('copying', 'catching_up', 'switching') AND target_database IS NOT NULL
        AND updated_at > now() - interval '1 day'`,
    { type: QueryTypes.SELECT },
  );
}

async function reconcileServer(
  deps: HygieneDeps,
  client: pg.PoolClient,
  server: TenantServer,
  mine: RegistryEntry[],
  everywhere: RegistryEntry[],
  scope: ServerScope,
  report: ReconcileReport,
): Promise<void> {
  const { apply, prefixed, prefix, grace } = scope;
  const databases = await serverDatabases(
    client,
    prefix,
    mine.map((e) => e.database),
  );
  const { rows: roleRows } = await client.query<{ rolname: string }>(
    `SELECT rolname FROM pg_roles WHERE $1 <> '' AND starts_with(rolname, $1)`,
    [prefix],
  );
  report.servers.push({
    server: server.key,
    reachable: true,
    databases: databases.filter((d) => prefixed(d.datname)).length,
    roles: roleRows.length,
  });
  const byName = new Map(databases.map((d) => [d.datname, d]));
  const roles = new Set(roleRows.map((r) => r.rolname));
  // Names any registry row uses, on any server (a store moved between servers keeps its names).
  const registryDatabases = new Set(everywhere.map((e) => e.database));
  const registryRoles = new Set(everywhere.map((e) => e.role));
  const pool = warmName(prefix, 'pool');
  const isWarm = (name: string) =>
    prefix !== '' && (name.startsWith(`${prefix}pool_`) || name.startsWith(`${prefix}prep_`));
  const add = (f: Omit<ReconcileFinding, 'repaired'>) => {
    const finding: ReconcileFinding = { ...f, repaired: false };
    report.findings.push(finding);
    return finding;
  };
  const attempt = async (finding: ReconcileFinding, work: () => Promise<unknown>) => {
    try {
      await work();
      finding.repaired = true;
    } catch (err) {
      finding.error = (err as Error).message.slice(0, 200);
      logger.warn(
        { server: server.key, name: finding.name, kind: finding.kind, err: finding.error },
        'reconcile: repair failed',
      );
    }
  };

  // The registry's databases: there, owned by their role, CONNECT to that role only.
  for (const e of mine) {
    const d = byName.get(e.database);
    if (!d) {
      // A store still being provisioned may not have it yet; a purged one is gone from the registry.
      if (e.dbStatus === 'ready')
        add({
          kind: 'missing_database',
          server: server.key,
          name: e.database,
          storeId: e.storeId,
          detail: `store ${e.storeId} (${e.storeStatus}) is registered with database ${e.database}, which is not on the server`,
          repair: null,
        });
      continue;
    }
    const others = d.grants.filter((g) => g.grantee !== e.role);
    if (d.owner === e.role && others.length === 0) continue;
    const roleExists = roles.has(e.role) || (await roleOnServer(client, e.role));
    const restore = roleExists ? `owner ${e.role}, CONNECT to ${e.role} only` : null;
    const findings: ReconcileFinding[] = [];
    if (d.owner !== e.role)
      findings.push(
        add({
          kind: 'ownership_differs',
          server: server.key,
          name: e.database,
          storeId: e.storeId,
          detail: `database ${e.database} is owned by ${d.owner}, not by its store's role ${e.role}`,
          repair: restore,
        }),
      );
    if (others.length)
      findings.push(
        add({
          kind: 'connect_differs',
          server: server.key,
          name: e.database,
          storeId: e.storeId,
          detail: `database ${e.database}: ${others.map((g) => `${g.grantee} may ${g.privileges.join(', ')}`).join('; ')}`,
          repair: restore,
        }),
      );
    if (apply && restore && findings.length) {
      const revoke = others
        .filter((g) => g.grantee !== 'PUBLIC')
        .map((g) => `REVOKE ALL ON DATABASE ${ident(e.database)} FROM ${ident(g.grantee)};`)
        .join('\n');
      let ok = false;
      await attempt(findings[0], async () => {
        await client.query(`${revoke}\n${databaseOfRoleSql(e.database, e.role)}`);
        ok = true;
      });
      for (const f of findings.slice(1)) [f.repaired, f.error] = [ok, findings[0].error];
    }
  }

  // Managed-prefix databases nobody registered: orphans, or the warm pool's.
  for (const d of databases) {
    if (!prefixed(d.datname)) continue;
    // Kept or being filled by a restore or a move: by server and name, since a moved store's old database
    // keeps the name its registry row now gives the database on the other server.
    const kept = scope.replaced.find((r) => r.server === server.key && r.database === d.datname);
    if (registryDatabases.has(d.datname) && !(kept && !mine.some((e) => e.database === d.datname))) continue;
    if (isWarm(d.datname)) {
      const ready = d.datname.startsWith(pool) && d.owner === d.datname;
      const young = d.datname.startsWith(`${prefix}prep_`) && (d.ageMinutes === null || d.ageMinutes < grace);
      if (ready || young) continue;
      add({
        kind: 'warm_pool_leftover',
        server: server.key,
        name: d.datname,
        storeId: null,
        detail: d.datname.startsWith(pool)
          ? `warm database ${d.datname} was never finished (owned by ${d.owner})`
          : d.datname.startsWith(`${prefix}pool_`)
            ? `warm database ${d.datname} holds an older schema`
            : `warm database ${d.datname} was left half-prepared`,
        repair: 'DROP DATABASE (and its role)',
      });
      continue;
    }
    // A restore or a move is filling it: not ours to report or drop until it ends.
    if (kept?.restoring) continue;
    if (kept?.dropAfter) {
      const until = new Date(kept.dropAfter);
      if (until.getTime() > Date.now())
        report.kept.push({ server: server.key, name: d.datname, storeId: kept.storeId, until: until.toISOString() });
      else
        add({
          kind: 'replaced_database_overdue',
          server: server.key,
          name: d.datname,
          storeId: kept.storeId,
          detail: `database ${d.datname}, replaced by a restore or a move of store ${kept.storeId}, was to be dropped on ${until.toISOString()} (expire-backups or tend-store-moves drops it)`,
          repair: null,
        });
      continue;
    }
    const age = d.ageMinutes === null ? 'of unknown age' : `${Math.floor(d.ageMinutes)} min old`;
    if (d.ageMinutes !== null && d.ageMinutes < grace) continue;
    add({
      kind: 'orphaned_database',
      server: server.key,
      name: d.datname,
      storeId: null,
      detail: `database ${d.datname} (owner ${d.owner}, ${age}) belongs to no store`,
      repair: d.ageMinutes === null ? null : 'DROP DATABASE (and its role) with dropOrphans',
    });
  }

  // Managed-prefix roles in no registry row that own no database.
  const owners = new Set(databases.map((d) => d.owner));
  const { rows: owning } = await client.query<{ rolname: string }>(
    `SELECT DISTINCT pg_get_userbyid(datdba) AS rolname FROM pg_database WHERE pg_get_userbyid(datdba) = ANY($1::text[])`,
    [[...roles]],
  );
  for (const r of owning) owners.add(r.rolname);
  for (const role of [...roles].sort()) {
    if (registryRoles.has(role) || owners.has(role)) continue;
    if (isWarm(role)) {
      add({
        kind: 'warm_pool_leftover',
        server: server.key,
        name: role,
        storeId: null,
        detail: `role ${role} of a warm database that is gone`,
        repair: 'DROP ROLE',
      });
      continue;
    }
    add({
      kind: 'orphaned_role',
      server: server.key,
      name: role,
      storeId: null,
      detail: `role ${role} belongs to no store and owns no database`,
      repair: 'DROP ROLE',
    });
  }

  // Templates: an interrupted build, or the schema of another code version.
  const current = `${TEMPLATE_PREFIX}${schemaDigest('tenant')}`;
  for (const d of databases) {
    if (!d.datname.startsWith(TEMPLATE_PREFIX) || d.datname === current) continue;
    const building = d.datname.endsWith('_building');
    add({
      kind: building ? 'interrupted_template_build' : 'stale_template',
      server: server.key,
      name: d.datname,
      storeId: null,
      detail: building
        ? `template build ${d.datname} was interrupted`
        : `template ${d.datname} is of a schema this code does not ship`,
      repair: 'DROP DATABASE',
    });
  }

  if (!apply) return;
  const ours = report.findings.filter((f) => f.server === server.key && !f.repaired);
  // Warm-pool leftovers under the refill's lock, template leftovers under the builder's: one at work is left be.
  await underLock(client, REFILL_LOCK_KEY, async (locked) => {
    for (const f of ours.filter((x) => x.kind === 'warm_pool_leftover')) {
      if (!locked) f.error = 'a warm-pool refill is running: left for the next time';
      else
        await attempt(f, async () => {
          if (byName.has(f.name)) await client.query(`DROP DATABASE IF EXISTS ${ident(f.name)} WITH (FORCE)`);
          await client.query(`DROP ROLE IF EXISTS ${ident(f.name)}`);
        });
    }
  });
  await underLock(client, TEMPLATE_LOCK_KEY, async (locked) => {
    for (const f of ours.filter((x) => x.kind === 'interrupted_template_build' || x.kind === 'stale_template')) {
      if (!locked) f.error = 'a template is being built: left for the next time';
      // A stale template being copied right now is in use: DROP without FORCE refuses, and it is left.
      else await attempt(f, () => client.query(`DROP DATABASE IF EXISTS ${ident(f.name)}`));
    }
  });
  for (const f of ours.filter((x) => x.kind === 'orphaned_role'))
    await attempt(f, () => client.query(`DROP ROLE IF EXISTS ${ident(f.name)}`));
  for (const f of ours.filter((x) => x.kind === 'orphaned_database' && x.repair)) {
    if (!scope.dropOrphans) {
      f.error = 'dropping an orphaned database needs dropOrphans';
      continue;
    }
    const owner = byName.get(f.name)!.owner;
    await attempt(f, async () => {
      await client.query(`DROP DATABASE IF EXISTS ${ident(f.name)} WITH (FORCE)`);
      // Its role too, when it is a managed-prefix role no store uses and that owns nothing else.
      if (prefixed(owner) && !registryRoles.has(owner))
        await client.query(`DROP ROLE IF EXISTS ${ident(owner)}`).catch(() => {});
      await auditEvent(deps.master, {
        actorUserId: scope.actor.userId,
        action: 'tenant_database.orphan_dropped',
        targetType: 'tenant_database',
        targetId: `${server.key}/${f.name}`,
        data: { by: scope.actor.label, server: server.key, database: f.name, owner, detail: f.detail },
      });
    });
  }
}

async function roleOnServer(client: pg.ClientBase, role: string): Promise<boolean> {
  return (await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role])).rowCount !== 0;
}

async function underLock(client: pg.ClientBase, key: number, work: (locked: boolean) => Promise<void>) {
  const {
    rows: [{ ok }],
  } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [key]);
  try {
    await work(ok);
  } finally {
    if (ok) await client.query('SELECT pg_advisory_unlock($1)', [key]);
  }
}

/** Stores in provisioning longer than the grace period whose job is not waiting or running: queued again on apply. */
async function stuckProvisioning(deps: HygieneDeps, grace: number, apply: boolean, report: ReconcileReport) {
  const rows = await deps.master.sequelize.query<{ storeId: string; server: string | null; mode: string }>(
    `SELECT s.id AS "storeId", d.server, d.mode FROM stores s JOIN store_databases d ON d.store_id = s.id
      WHERE s.status = 'provisioning' AND d.updated_at < now() - make_interval(mins => $1::int)`,
    { bind: [Math.floor(grace)], type: QueryTypes.SELECT },
  );
  const queue = deps.queues.get(QueueName.provisioning);
  for (const row of rows) {
    const jobId = provisioningJobId(row.storeId);
    const state = await queue.getJobState(jobId);
    if (LIVE_JOB.includes(state)) continue;
    const finding: ReconcileFinding = {
      kind: 'stuck_provisioning',
      server: row.mode === 'external' ? 'external' : (row.server ?? 'external'),
      name: row.storeId,
      storeId: row.storeId,
      detail: `store ${row.storeId} is provisioning, but its job is ${state === 'unknown' ? 'gone' : state}`,
      repair: 'queue its provisioning job again',
      repaired: false,
    };
    report.findings.push(finding);
    if (!apply) continue;
    try {
      const job = await queue.getJob(jobId);
      if (job) await job.remove();
      await queue.add('provision', { storeId: row.storeId }, { jobId, attempts: deps.config.provisioning.attempts });
      finding.repaired = true;
    } catch (err) {
      finding.error = (err as Error).message.slice(0, 200);
    }
  }
}
