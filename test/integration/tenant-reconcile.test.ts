import { randomBytes } from 'node:crypto';
import request from 'supertest';
import { QueryTypes } from 'sequelize';
import { schemaDigest } from '../../src/db/migrate';
import { processMaintenance } from '../../src/maintenance';
import { provisioningJobId, QueueName } from '../../src/queue/queues';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { createPrefixedStore, dropAfterwards, tenantry, uniquePrefix, type PrefixedStore } from '../helpers/hygiene';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * Reconcile (POST /api/admin/tenants/reconcile, `tenantry tenants:reconcile`): the databases and roles named
 * with this suite's own TENANT_DB_PREFIX on the test server against the registry. Found: an orphaned database
 * and role, a missing database, a lost provisioning job, PUBLIC CONNECT granted again by hand; apply repairs
 * what it should and nothing else; the orphan is dropped only with dropOrphans.
 */
const prefix = uniquePrefix('reconcile');
const t = useSuite('tenant-reconcile', { TENANT_DB_PREFIX: prefix });
let adminToken: string;
let clean: PrefixedStore;
let publicConnect: PrefixedStore;
let missing: PrefixedStore;
let stuck: PrefixedStore;
const orphanDb = `${prefix}orphan`;
const orphanRole = `${prefix}lonely`;

type Finding = { kind: string; name: string; storeId: string | null; repaired: boolean; error?: string };
const ours = (findings: Finding[]) =>
  findings
    .filter((f) => f.name.startsWith(prefix) || [clean, publicConnect, missing, stuck].some((s) => s.id === f.name))
    .map(({ kind, name, repaired }) => ({ kind, name, repaired }))
    .sort((a, b) => `${a.kind}${a.name}`.localeCompare(`${b.kind}${b.name}`));

const publicMayConnect = async (database: string) =>
  (await adminQuery(`SELECT has_database_privilege('public', '${database}', 'CONNECT') AS may`)).rows[0].may as boolean;
const exists = async (what: 'database' | 'role', name: string) =>
  (
    await adminQuery(
      what === 'database'
        ? `SELECT 1 FROM pg_database WHERE datname = '${name}'`
        : `SELECT 1 FROM pg_roles WHERE rolname = '${name}'`,
    )
  ).rowCount === 1;
const jobState = () => t.ctx.queues.get(QueueName.provisioning).getJobState(provisioningJobId(stuck.id));
const post = (body?: object) => {
  const r = request(t.app).post('/api/admin/tenants/reconcile').set(auth(adminToken));
  return body ? r.send(body) : r;
};

beforeAll(async () => {
  adminToken = (await registerAdmin(t)).token;
  const ownerId = (await registerUser(t.app)).user.id;
  [clean, publicConnect, missing] = await Promise.all([1, 2, 3].map(() => createPrefixedStore(t, ownerId)));
  stuck = await createPrefixedStore(t, ownerId, { status: 'provisioning' });
  await adminQuery(`GRANT CONNECT ON DATABASE "${publicConnect.database}" TO PUBLIC`);
  await adminQuery(`DROP DATABASE "${missing.database}" WITH (FORCE)`);
  dropAfterwards(t, 'ROLE', orphanRole);
  dropAfterwards(t, 'ROLE', orphanDb);
  dropAfterwards(t, 'DATABASE', orphanDb);
  await adminQuery(`CREATE ROLE "${orphanDb}" NOLOGIN`);
  await adminQuery(`CREATE DATABASE "${orphanDb}" OWNER "${orphanDb}"`);
  await adminQuery(`CREATE ROLE "${orphanRole}" NOLOGIN`);
});

describe('POST /api/admin/tenants/reconcile', () => {
  test('a dry run (the default) finds each, changes nothing', async () => {
    const res = await post({ graceMinutes: 0 });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ applied: false, dropOrphans: false, prefix, repairs: [] });
    expect(ours(res.body.findings)).toEqual([
      { kind: 'connect_differs', name: publicConnect.database, repaired: false },
      { kind: 'missing_database', name: missing.database, repaired: false },
      { kind: 'orphaned_database', name: orphanDb, repaired: false },
      { kind: 'orphaned_role', name: orphanRole, repaired: false },
      { kind: 'stuck_provisioning', name: stuck.id, repaired: false },
    ]);
    const connect = res.body.findings.find((f: Finding) => f.kind === 'connect_differs');
    expect(connect.detail).toBe(`database ${publicConnect.database}: PUBLIC may CONNECT`);
    expect(await publicMayConnect(publicConnect.database)).toBe(true);
    expect(await exists('role', orphanRole)).toBe(true);
    expect(await jobState()).toBe('unknown');
  });

  test('databases younger than the grace period (default 60 minutes) are not orphans; a bodyless POST is a dry run', async () => {
    const res = await post();
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ applied: false, graceMinutes: 60 });
    expect(ours(res.body.findings).map((f) => f.kind)).toEqual([
      'connect_differs',
      'missing_database',
      'orphaned_role',
    ]);
  });

  test('apply makes the safe repairs and nothing else: the orphaned database stays without dropOrphans', async () => {
    const res = await post({ apply: true, graceMinutes: 0 });
    expect(res.status).toBe(200);
    expect(ours(res.body.findings)).toEqual([
      { kind: 'connect_differs', name: publicConnect.database, repaired: true },
      { kind: 'missing_database', name: missing.database, repaired: false },
      { kind: 'orphaned_database', name: orphanDb, repaired: false },
      { kind: 'orphaned_role', name: orphanRole, repaired: true },
      { kind: 'stuck_provisioning', name: stuck.id, repaired: true },
    ]);
    // Outside this suite's prefix, apply may only have dropped leftovers of template builds.
    const others = (res.body.repairs as Finding[]).filter((r) => !r.name.startsWith(prefix) && r.name !== stuck.id);
    expect(others.filter((r) => !['interrupted_template_build', 'stale_template'].includes(r.kind))).toEqual([]);
    expect(res.body.findings.find((f: Finding) => f.name === orphanDb).error).toBe(
      'dropping an orphaned database needs dropOrphans',
    );
    expect(await publicMayConnect(publicConnect.database)).toBe(false);
    expect(await exists('role', orphanRole)).toBe(false);
    expect(await exists('database', orphanDb)).toBe(true);
    expect(await jobState()).toBe('waiting');
    // The clean store's database is as it was.
    const [owner] = (
      await adminQuery(`SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = '${clean.database}'`)
    ).rows;
    expect(owner).toEqual({ owner: clean.database });
    const again = await post({ graceMinutes: 0 });
    expect(ours(again.body.findings).map((f) => f.kind)).toEqual(['missing_database', 'orphaned_database']);
  });

  test('apply with dropOrphans drops the orphaned database and its role, audited', async () => {
    const res = await post({ apply: true, dropOrphans: true, graceMinutes: 0 });
    expect(res.status).toBe(200);
    expect(res.body.repairs).toEqual(
      expect.arrayContaining([expect.objectContaining({ kind: 'orphaned_database', name: orphanDb })]),
    );
    expect(await exists('database', orphanDb)).toBe(false);
    expect(await exists('role', orphanDb)).toBe(false);
    const audited = await t.ctx.master.sequelize.query<{ action: string; targetId: string }>(
      `SELECT action, target_id AS "targetId" FROM audit_log WHERE action IN ('tenant_database.orphan_dropped', 'fleet.reconciled') ORDER BY id`,
      { type: QueryTypes.SELECT },
    );
    expect(audited).toEqual(
      expect.arrayContaining([
        { action: 'tenant_database.orphan_dropped', targetId: expect.stringMatching(new RegExp(`/${orphanDb}$`)) },
        { action: 'fleet.reconciled', targetId: 'tenant-servers' },
      ]),
    );
  });

  test('the daily maintenance task makes a dry run and keeps its report', async () => {
    const counts = await processMaintenance(t.ctx, { task: 'reconcile-dry-run' });
    expect(counts).toMatchObject({ missing_database: expect.any(Number), orphaned_database: 0 });
    expect(counts.missing_database).toBeGreaterThanOrEqual(1);
    const [latest] = await t.ctx.master.sequelize.query<{ applied: boolean; requestedBy: string }>(
      `SELECT applied, requested_by AS "requestedBy" FROM reconcile_reports ORDER BY created_at DESC, id DESC LIMIT 1`,
      { type: QueryTypes.SELECT },
    );
    expect(latest).toEqual({ applied: false, requestedBy: 'schedule' });
  });

  test('the latest report is on /metrics', async () => {
    const res = await request(t.app).get('/metrics').set(auth(adminToken));
    expect(res.status).toBe(200);
    expect(res.text).toMatch(/^tenantry_reconcile_findings\{kind="missing_database"\} [1-9]/m);
  });

  test('an unknown field is refused', async () => {
    const res = await post({ apply: true, drop: true });
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('VALIDATION_FAILED');
  });
});

describe('databases a restore replaced (store_restores.replaced_database)', () => {
  const kept = `${prefix}replaced_kept`;
  const overdue = `${prefix}replaced_overdue`;
  const restoring = `${prefix}restoring_new`;

  beforeAll(async () => {
    for (const name of [kept, overdue, restoring]) {
      dropAfterwards(t, 'DATABASE', name);
      await adminQuery(`CREATE DATABASE "${name}" OWNER "${clean.database}" ALLOW_CONNECTIONS false`);
    }
    await t.ctx.master.sequelize.query(
      `INSERT INTO store_restores (store_id, state, server, replaced_database, replaced_role, drop_after)
       VALUES ($1, 'completed', '127.0.0.1:5432', $2, $4, '2099-01-01T00:00:00Z'),
              ($1, 'completed', '127.0.0.1:5432', $3, $4, now() - interval '1 day')`,
      { bind: [clean.id, kept, overdue, clean.database] },
    );
    await t.ctx.master.sequelize.query(
      `INSERT INTO store_restores (store_id, state, server, new_database) VALUES ($1, 'running', '127.0.0.1:5432', $2)`,
      { bind: [clean.id, restoring] },
    );
  });

  test('the database a running restore is filling is neither reported nor dropped', async () => {
    const res = await post({ apply: true, dropOrphans: true, graceMinutes: 0 });
    expect(res.status).toBe(200);
    expect((res.body.findings as Finding[]).filter((f) => f.name === restoring)).toEqual([]);
    expect(await exists('database', restoring)).toBe(true);
  });

  test('are no orphans: kept until their date, overdue after it, never dropped by reconcile', async () => {
    const res = await post({ apply: true, dropOrphans: true, graceMinutes: 0 });
    expect(res.status).toBe(200);
    const about = (res.body.findings as Finding[]).filter((f) => [kept, overdue].includes(f.name));
    expect(about.map(({ kind, name, storeId, repaired }) => ({ kind, name, storeId, repaired }))).toEqual([
      { kind: 'replaced_database_overdue', name: overdue, storeId: clean.id, repaired: false },
    ]);
    expect(res.body.kept).toEqual([
      { server: '127.0.0.1:5432', name: kept, storeId: clean.id, until: '2099-01-01T00:00:00.000Z' },
    ]);
    expect(await exists('database', kept)).toBe(true);
    expect(await exists('database', overdue)).toBe(true);
    const cli = await tenantry(t, ['tenants:reconcile', '--grace', '0']);
    expect(cli.stdout).toContain(
      `  kept  127.0.0.1:5432  replaced database ${kept} of store ${clean.id} kept until 2099-01-01T00:00:00.000Z\n`,
    );
  });
});

describe('leftovers of the warm pool and of template builds', () => {
  const prep = `${prefix}prep_${schemaDigest('tenant')}_0123456789ab`;
  const poolRole = `${prefix}pool_${schemaDigest('tenant')}_ba9876543210`;
  const building = `tenantry_tpl_test${randomBytes(3).toString('hex')}_building`;

  beforeAll(async () => {
    for (const name of [prep, building]) dropAfterwards(t, 'DATABASE', name);
    dropAfterwards(t, 'ROLE', poolRole);
    await adminQuery(`CREATE DATABASE "${prep}"`);
    await adminQuery(`CREATE ROLE "${poolRole}" NOLOGIN`);
    await adminQuery(`CREATE DATABASE "${building}"`);
  });

  test('are found, and dropped on apply (without dropOrphans)', async () => {
    const kinds = (body: { findings: Finding[] }) =>
      body.findings
        .filter((f) => [prep, poolRole, building].includes(f.name))
        .map(({ kind, name, repaired }) => ({ kind, name, repaired }))
        .sort((a, b) => a.name.localeCompare(b.name));
    const dry = await post({ graceMinutes: 0 });
    expect(kinds(dry.body)).toEqual(
      [
        { kind: 'warm_pool_leftover', name: prep, repaired: false },
        { kind: 'warm_pool_leftover', name: poolRole, repaired: false },
        { kind: 'interrupted_template_build', name: building, repaired: false },
      ].sort((a, b) => a.name.localeCompare(b.name)),
    );
    // A half-prepared warm database younger than the grace period may be one being prepared.
    expect(kinds((await post()).body).map((f) => f.name)).not.toContain(prep);
    const applied = await post({ apply: true, graceMinutes: 0 });
    expect(kinds(applied.body).every((f) => f.repaired)).toBe(true);
    expect(await exists('database', prep)).toBe(false);
    expect(await exists('role', poolRole)).toBe(false);
    expect(await exists('database', building)).toBe(false);
  });
});

describe('tenantry tenants:reconcile', () => {
  test('a dry run prints what it found and exits 2', async () => {
    const res = await tenantry(t, ['tenants:reconcile', '--grace', '0']);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(2);
    expect(res.stdout).toMatch(/^Reconcile \(dry run; prefix tenantry_test_reconcile_[0-9a-f]+_; grace 0 min\): /);
    expect(res.stdout).toContain(
      `  missing_database  127.0.0.1:5432  store ${missing.id} (active) is registered with database ${missing.database}, which is not on the server  [report only]\n`,
    );
  });

  test('--drop-orphans without --apply is refused with exit 1', async () => {
    const res = await tenantry(t, ['tenants:reconcile', '--drop-orphans']);
    expect(res).toMatchObject({ code: 1, stderr: 'error: --drop-orphans needs --apply\n' });
  });
});

describe('a store registered on a server no longer in TENANT_SERVERS', () => {
  test('is reported as missing_database, on that server, and nothing is repaired', async () => {
    const gone = await createPrefixedStore(t, (await registerUser(t.app)).user.id);
    const [{ server }] = await t.ctx.master.sequelize.query<{ server: string }>(
      `SELECT server FROM store_databases WHERE store_id = $1::uuid`,
      { bind: [gone.id], type: QueryTypes.SELECT },
    );
    await t.ctx.master.sequelize.query(
      `UPDATE store_databases SET server = '10.0.0.9:5432' WHERE store_id = $1::uuid`,
      {
        bind: [gone.id],
      },
    );
    try {
      const res = await post({ apply: true });
      expect(res.status).toBe(200);
      const about = (res.body.findings as (Finding & { server: string; detail: string })[]).filter(
        (f) => f.storeId === gone.id,
      );
      expect(about).toEqual([
        expect.objectContaining({
          kind: 'missing_database',
          server: '10.0.0.9:5432',
          name: gone.database,
          repaired: false,
          detail: expect.stringContaining('not one of TENANT_SERVERS'),
        }),
      ]);
    } finally {
      await t.ctx.master.sequelize.query(`UPDATE store_databases SET server = $2 WHERE store_id = $1::uuid`, {
        bind: [gone.id, server],
      });
    }
  });
});
