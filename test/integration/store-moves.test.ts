import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { listTenantTables } from '../../src/backups/tenant-tables';
import { withClient } from '../../src/db/pg-client';
import { reconcile } from '../../src/hygiene/reconcile';
import { freezeWrites, startCapture, withPrimaryKeys } from '../../src/moves/change-capture';
import { processMove, tendMoves } from '../../src/moves/move-runner';
import { drainStatus } from '../../src/moves/moves.service';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { adminQuery, SECOND_SERVER_URL, TEST_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { auth, provisionManagedStore, queryWith, storeConnection } from '../helpers/stores';
import { tenantry } from '../helpers/hygiene';
import { useSuite } from '../helpers/suite';
import { serverKeyOfUrl } from '../../src/db/tenant-servers';

/**
 * Moving a store's managed database to another tenant server (issue 15, item 5), with the suite's worker
 * running the move jobs: under concurrent reads and writes, bad requests, a drain, and the command line.
 */

const SERVERS = `${TEST_SERVER_URL},${SECOND_SERVER_URL}`;
const t = useSuite('moves', { WORKER: 'on', TENANT_SERVERS: SERVERS, PAYMENTS_PROVIDER: 'manual' });

const urlOf = (key: string) => [TEST_SERVER_URL, SECOND_SERVER_URL].find((u) => serverKeyOfUrl(u) === key)!;

let admin: Awaited<ReturnType<typeof registerAdmin>>;
let owner: Awaited<ReturnType<typeof registerUser>>;
type Store = Awaited<ReturnType<typeof provisionManagedStore>>;

beforeAll(async () => {
  admin = await registerAdmin(t);
  owner = await registerUser(t.app);
  // Agency: no product or store limit gets in the way of the load.
  await request(t.app)
    .put(`/api/admin/users/${owner.user.id}/plan`)
    .set(auth(admin.token))
    .send({ planId: 'agency' })
    .expect(200);
  // Old databases of moved stores (not in the registry any more), whatever a failing test left.
  t.defer('the moved stores old databases', async () => {
    const rows = await t.ctx.master.sequelize
      .query<{ server: string; name: string; role: string | null }>(
        `SELECT source_server AS server, source_database AS name, role FROM store_moves WHERE dropped_at IS NULL
         UNION ALL SELECT target_server, target_database, role FROM store_moves WHERE state = 'failed' AND target_database IS NOT NULL`,
        { type: QueryTypes.SELECT },
      )
      .catch(() => []);
    for (const r of rows) {
      await adminQuery(`DROP DATABASE IF EXISTS "${r.name}" WITH (FORCE)`, urlOf(r.server)).catch(() => {});
      if (r.role) await adminQuery(`DROP ROLE IF EXISTS "${r.role}"`, urlOf(r.server)).catch(() => {});
    }
  });
});

const placement = async (storeId: string) => (await t.ctx.master.models.StoreDatabase.findByPk(storeId))!;

/** Where a store lives (`from`), the other test server (`to`), its credentials and its database's admin URL. */
async function sides(storeId: string) {
  const from = (await placement(storeId)).server!;
  const to = [TEST_SERVER_URL, SECOND_SERVER_URL].map(serverKeyOfUrl).find((k) => k !== from)!;
  const conn = await storeConnection(t, storeId);
  const source = new URL(urlOf(from));
  source.pathname = `/${conn.database}`;
  return { from, to, conn, sourceUrl: source.toString() };
}

const moveRow = async (storeId: string) =>
  (
    await t.ctx.master.sequelize.query<{
      id: string;
      state: string;
      write_pause_ms: number | null;
      error: string | null;
      source_server: string;
      source_database: string;
    }>(`SELECT * FROM store_moves WHERE store_id = $1 ORDER BY created_at DESC LIMIT 1`, {
      bind: [storeId],
      type: QueryTypes.SELECT,
    })
  )[0];

async function moveFinished(storeId: string, timeoutMs = 40_000) {
  return eventually(async () => {
    const row = await moveRow(storeId);
    if (row?.state !== 'completed' && row?.state !== 'failed') throw new Error(`move ${row?.state}`);
    return row;
  }, timeoutMs);
}

/** Writes and reads on a store through the storefront API until stopped; what each answered. */
function load(store: Store, token: string, label: string) {
  const host = `${store.slug}.localhost`;
  const written: string[] = [];
  const unexpected: string[] = [];
  let migrating = 0;
  let stopped = false;
  let n = 0;
  const check = (res: request.Response, ok: number) => {
    if (res.status === ok) return true;
    if (res.status === 503 && res.body?.code === 'TENANT_MIGRATING' && res.headers['retry-after']) migrating++;
    else unexpected.push(`${res.status} ${res.text.slice(0, 200)}`);
    return false;
  };
  const writer = async () => {
    while (!stopped) {
      const sku = `${label}-${++n}`;
      const res = await request(t.app)
        .post('/api/store/products')
        .set('Host', host)
        .set(auth(token))
        .send({ sku, name: `Product ${sku}`, priceCents: 100, stock: 5 });
      if (check(res, 201)) written.push(sku);
    }
  };
  const reader = async () => {
    while (!stopped) check(await request(t.app).get('/api/store/products?limit=5').set('Host', host), 200);
  };
  const running = Promise.all([writer(), writer(), reader()]);
  return {
    written,
    unexpected,
    migrating: () => migrating,
    async stop() {
      stopped = true;
      await running;
    },
  };
}

describe('POST /api/admin/stores/:id/move', () => {
  test('moves a store to the other server under concurrent reads and writes: no write lost, only 503 TENANT_MIGRATING meanwhile, another store untouched', async () => {
    const store = await provisionManagedStore(t.app, owner.token);
    const other = await provisionManagedStore(t.app, owner.token);
    const { from, to } = await sides(store.id);
    // Rows for the bulk copy to carry.
    await queryWith(
      await storeConnection(t, store.id),
      `INSERT INTO products (sku, name, price_cents) SELECT 'bulk-' || i, 'Bulk ' || i, i FROM generate_series(1, 3000) i`,
    );

    const moving = load(store, owner.token, 'moving');
    const bystander = load(other, owner.token, 'other');
    let row: Awaited<ReturnType<typeof moveFinished>>;
    try {
      await new Promise((r) => setTimeout(r, 300));
      const res = await request(t.app)
        .post(`/api/admin/stores/${store.id}/move`)
        .set(auth(admin.token))
        .send({ server: to })
        .expect(202);
      expect(res.body).toEqual({ jobId: expect.stringMatching(/^move-/) });
      row = await moveFinished(store.id);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      // Also when the move fails: no request may outlive the test.
      await Promise.all([moving.stop(), bystander.stop()]);
    }

    expect(row).toMatchObject({ state: 'completed', error: null, source_server: from });
    expect(row.write_pause_ms).toEqual(expect.any(Number));
    expect(moving.unexpected).toEqual([]);
    expect(bystander.unexpected).toEqual([]);
    expect(bystander.migrating()).toBe(0);
    expect(moving.written.length).toBeGreaterThan(5);

    // Placement: the master, the credentials and the data all say the target server.
    const db = await placement(store.id);
    expect(db.server).toBe(to);
    const conn = await storeConnection(t, store.id);
    expect(`${conn.host}:${conn.port}`).toBe(to);
    const skus = new Set((await queryWith<{ sku: string }>(conn, `SELECT sku FROM products`)).map((r) => r.sku));
    expect(moving.written.filter((s) => !skus.has(s))).toEqual([]);
    expect([...skus].filter((s) => s.startsWith('bulk-'))).toHaveLength(3000);
    // The store is served from there: a new product lands on the target.
    await request(t.app)
      .post('/api/store/products')
      .set('Host', `${store.slug}.localhost`)
      .set(auth(owner.token))
      .send({ sku: 'after-move', name: 'After', priceCents: 1, stock: 1 })
      .expect(201);
    expect(await queryWith(conn, `SELECT sku FROM products WHERE sku = 'after-move'`)).toHaveLength(1);
    // No capture left on the target; the source kept, closed, then dropped by maintenance after its grace.
    expect(await queryWith(conn, `SELECT 1 FROM pg_namespace WHERE nspname = 'tenantry_move'`)).toEqual([]);
    const source = await adminQuery(
      `SELECT datallowconn FROM pg_database WHERE datname = '${row.source_database}'`,
      urlOf(from),
    );
    expect(source.rows).toEqual([{ datallowconn: false }]);
    const audit = await t.ctx.master.sequelize.query<{ action: string }>(
      `SELECT action FROM audit_log WHERE store_id = $1 AND action LIKE 'store.move.%' ORDER BY id`,
      { bind: [store.id], type: QueryTypes.SELECT },
    );
    expect(audit.map((a) => a.action)).toEqual(['store.move.requested', 'store.move.completed']);
    // Reconcile knows the kept source: listed as kept until its drop date, never an orphan.
    const report = await reconcile(t.ctx, { userId: null, label: 'test' });
    expect(report.kept).toContainEqual(
      expect.objectContaining({ server: from, name: row.source_database, storeId: store.id }),
    );
    expect(report.findings.filter((f) => f.name === row.source_database)).toEqual([]);
    await t.ctx.master.sequelize.query(`UPDATE store_moves SET drop_after = now() WHERE id = $1`, { bind: [row.id] });
    expect((await tendMoves(t.ctx)).dropped).toBe(1);
    expect(
      (await adminQuery(`SELECT 1 FROM pg_database WHERE datname = '${row.source_database}'`, urlOf(from))).rowCount,
    ).toBe(0);
  });

  test('refuses what it cannot do, changing nothing: not an admin 403, unknown store 404, bad or same server 400, external or suspended store 409, a second move 409', async () => {
    const store = await provisionManagedStore(t.app, owner.token);
    const here = (await placement(store.id)).server!;
    const there = [TEST_SERVER_URL, SECOND_SERVER_URL].map(serverKeyOfUrl).find((k) => k !== here)!;
    const move = (id: string, body: unknown, token = admin.token) =>
      request(t.app)
        .post(`/api/admin/stores/${id}/move`)
        .set(auth(token))
        .send(body as object);

    expectProblem(await move(store.id, { server: there }, owner.token), 403, 'FORBIDDEN');
    expectProblem(await move('00000000-0000-4000-8000-000000000000', { server: there }), 404, 'STORE_NOT_FOUND');
    expectProblem(await move(store.id, { server: '10.0.0.9:5432' }), 400, 'VALIDATION_FAILED');
    expectProblem(await move(store.id, { server: 'not a server' }), 400, 'VALIDATION_FAILED');
    expectProblem(await move(store.id, { server: there, extra: 1 }), 400, 'VALIDATION_FAILED');
    expectProblem(await move(store.id, { server: here }), 400, 'VALIDATION_FAILED');

    const external = await provisionManagedStore(t.app, owner.token);
    await t.ctx.master.sequelize.query(`UPDATE store_databases SET mode = 'external' WHERE store_id = $1`, {
      bind: [external.id],
    });
    expectProblem(await move(external.id, { server: there }), 409, 'CONFLICT');
    await t.ctx.master.sequelize.query(`UPDATE store_databases SET mode = 'managed' WHERE store_id = $1`, {
      bind: [external.id],
    });
    await request(t.app).post(`/api/admin/stores/${store.id}/suspend`).set(auth(admin.token)).expect(200);
    expectProblem(await move(store.id, { server: there }), 409, 'CONFLICT');
    await request(t.app).post(`/api/admin/stores/${store.id}/resume`).set(auth(admin.token)).expect(200);

    const rows = await t.ctx.master.sequelize.query(`SELECT 1 FROM store_moves WHERE store_id = ANY($1::uuid[])`, {
      bind: [[store.id, external.id]],
      type: QueryTypes.SELECT,
    });
    expect(rows).toEqual([]);
    expect((await placement(store.id)).server).toBe(here);

    // One move at a time: the second while the first is under way is refused. (The first names the server by its
    // TENANT_SERVERS entry, a URL: the same server as its host:port.)
    const thereUrl = [TEST_SERVER_URL, SECOND_SERVER_URL].find((u) => serverKeyOfUrl(u) === there)!;
    await move(store.id, { server: thereUrl }).expect(202);
    const second = await move(store.id, { server: there });
    if ((await moveRow(store.id)).state !== 'completed') expectProblem(second, 409, 'CONFLICT');
    expect((await moveFinished(store.id)).state).toBe('completed');
    expect((await placement(store.id)).server).toBe(there);
  });
});

describe('a move that cannot finish', () => {
  test('leaves the store as it was: no target database or role, no triggers on the source, store.move.failed audited', async () => {
    const store = await provisionManagedStore(t.app, owner.token);
    const { from, to, conn, sourceUrl } = await sides(store.id);
    // A table whose rows a move could not match (no primary key): found once the target is made.
    await withClient(sourceUrl, (c) => c.query(`CREATE TABLE public.no_key (v integer)`));
    try {
      await request(t.app)
        .post(`/api/admin/stores/${store.id}/move`)
        .set(auth(admin.token))
        .send({ server: to })
        .expect(202);
      const row = await moveFinished(store.id);
      expect(row).toMatchObject({ state: 'failed', error: expect.stringMatching(/no_key has no primary key/) });
    } finally {
      await withClient(sourceUrl, (c) => c.query(`DROP TABLE IF EXISTS public.no_key`));
    }
    expect((await placement(store.id)).server).toBe(from);
    const target = await adminQuery(
      `SELECT (SELECT count(*) FROM pg_database WHERE datname = '${conn.database}')::int AS dbs,
              (SELECT count(*) FROM pg_roles WHERE rolname = '${conn.user}')::int AS roles`,
      urlOf(to),
    );
    expect(target.rows).toEqual([{ dbs: 0, roles: 0 }]);
    expect(await queryWith(conn, `SELECT 1 FROM pg_namespace WHERE nspname = 'tenantry_move'`)).toEqual([]);
    await request(t.app)
      .post('/api/store/products')
      .set('Host', `${store.slug}.localhost`)
      .set(auth(owner.token))
      .send({ sku: 'still-here', name: 'Still here', priceCents: 1, stock: 1 })
      .expect(201);
    const audit = await t.ctx.master.sequelize.query<{ action: string }>(
      `SELECT action FROM audit_log WHERE store_id = $1 AND action LIKE 'store.move.%' ORDER BY id`,
      { bind: [store.id], type: QueryTypes.SELECT },
    );
    expect(audit.map((a) => a.action)).toEqual(['store.move.requested', 'store.move.failed']);
  });
});

describe('a move cut off by its worker', () => {
  test('is undone and made again: the source, frozen mid-switch, refuses writes with 503 TENANT_MIGRATING until the move ends on the target', async () => {
    const store = await provisionManagedStore(t.app, owner.token);
    const { from, to, conn, sourceUrl } = await sides(store.id);
    // What a worker killed in the middle of the switch leaves: the row switching, a target database begun, the
    // capture and the write refusal committed on the source.
    const [row] = await t.ctx.master.sequelize.query<{ id: string }>(
      `INSERT INTO store_moves (store_id, state, source_server, source_database, target_server, target_database, role,
                                requested_by, attempts)
       VALUES ($1, 'switching', $2, $3, $4, $3, $5, 'test', 1) RETURNING id`,
      { bind: [store.id, from, conn.database, to, conn.user], type: QueryTypes.SELECT },
    );
    await adminQuery(`CREATE DATABASE "${conn.database}"`, urlOf(to));
    await withClient(sourceUrl, async (c) => {
      const tables = await withPrimaryKeys(c, await listTenantTables(c));
      await startCapture(c, tables, 1000);
      await c.query('BEGIN');
      await freezeWrites(c, tables, 1000);
      await c.query('COMMIT');
    });
    const write = (sku: string) =>
      request(t.app)
        .post('/api/store/products')
        .set('Host', `${store.slug}.localhost`)
        .set(auth(owner.token))
        .send({ sku, name: sku, priceCents: 1, stock: 1 });
    const refused = await write('while-cut-off');
    expectProblem(refused, 503, 'TENANT_MIGRATING');
    expect(refused.headers['retry-after']).toBe('2');

    // The job comes back (BullMQ's stalled hand-over): undone, copied again, switched.
    const result = await processMove(t.ctx, row.id);
    expect(result).toMatchObject({ from, to, writePauseMs: expect.any(Number) });
    expect(await moveRow(store.id)).toMatchObject({ state: 'completed', error: null });
    expect((await placement(store.id)).server).toBe(to);
    await write('after-recovery').expect(201);
    const moved = await storeConnection(t, store.id);
    expect(await queryWith(moved, `SELECT sku FROM products`)).toEqual([{ sku: 'after-recovery' }]);
  });
});

/** `tenantry …` in a child process on this suite's master DB, Redis prefix and tenant servers. */
const cli = (args: string[]) => tenantry(t, args, { TENANT_SERVERS: SERVERS });

describe('draining and the command line', () => {
  test('tenants:move moves a store and exits 0 with the write pause; tenants:drain then empties a server, exit 0', async () => {
    const store = await provisionManagedStore(t.app, owner.token);
    const { from, to } = await sides(store.id);
    const moved = await cli(['tenants:move', store.id, to]);
    expect({ code: moved.code, stderr: moved.stderr }).toEqual({ code: 0, stderr: '' });
    expect(moved.stdout).toMatch(
      new RegExp(`Move .* completed: store ${store.id} is on ${to}; .* writes paused \\d+ ms\\.`),
    );
    expect((await placement(store.id)).server).toBe(to);

    // Every active managed store on `to` now goes back to `from` (the only other server).
    const onTo = await t.ctx.master.sequelize.query<{ store_id: string }>(
      `SELECT d.store_id FROM store_databases d JOIN stores s ON s.id = d.store_id
        WHERE d.server = $1 AND d.mode = 'managed' AND s.status = 'active'`,
      { bind: [to], type: QueryTypes.SELECT },
    );
    expect(onTo.length).toBeGreaterThan(0);
    const drained = await cli(['tenants:drain', to, '--per-server', '2']);
    expect({ code: drained.code, stderr: drained.stderr }).toEqual({ code: 0, stderr: '' });
    expect(drained.stdout).toMatch(
      new RegExp(`Drain .* completed: ${onTo.length} moved, 0 failed of ${onTo.length}\\.`),
    );
    const drainId = /Drain (\S+) started\./.exec(drained.stdout)![1];
    expect(await drainStatus(t.ctx, drainId)).toMatchObject({ state: 'completed', total: onTo.length, failed: 0 });
    // Given again, the drain of an empty server has nothing to move and succeeds at once.
    const again = await cli(['tenants:drain', to]);
    expect(again).toMatchObject({ code: 0, stdout: expect.stringMatching(/completed: 0 moved, 0 failed of 0\./) });
    for (const { store_id } of onTo) expect((await placement(store_id)).server).toBe(from);
  });
});
