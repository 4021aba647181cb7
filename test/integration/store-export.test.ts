import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import pg from 'pg';
import request from 'supertest';
import { extract } from 'tar-stream';
import { EXPORT_APPLICATION_NAME } from '../../src/exports/export.service';
import type { ExportManifest } from '../../src/exports/store-archive';
import { registerUser } from '../helpers/app';
import { TEST_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, setStoreStatus, tenantQuery, type TestStore } from '../helpers/tenants';

/**
 * GET /api/stores/:id/export: the owner downloads the store's data as a tar.gz of NDJSON per table and a
 * manifest, streamed from one snapshot without holding the store in memory; nobody else may; a download cut
 * short ends its database session.
 */
const t = useSuite('store-export');
let api: RecordingClient;
let baseUrl: string;
let owner: Awaited<ReturnType<typeof registerUser>>;
let store: TestStore;

/** A value COPY's text format escapes (backslash, tab, newline, CR), JSON escapes (quote), and non-ASCII text. */
const TRICKY = 'back\\slash \\N tab\there new\nline cr\r "quoted" é ü 中文 🎉 \\x41 \\101 end\\';
const BIG = '9007199254740993'; // 2^53 + 1: a double cannot hold it

beforeAll(async () => {
  api = recordingClient(t.app);
  owner = await registerUser(t.app);
  // Room for the stores the tests make.
  await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'pro' });
  store = await createActiveStore(t, { ownerId: owner.user.id });
  const server = t.listen();
  await new Promise<void>((resolve) => (server.listening ? resolve() : server.once('listening', () => resolve())));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  await tenantQuery(
    store,
    `INSERT INTO products (sku, name, description, price_cents) VALUES ('tricky', $1, $1, 1), ('plain', 'Plain', '', 2)`,
    [TRICKY],
  );
  await tenantQuery(store, `UPDATE stores SET settings = jsonb_build_object('note', $1::text, 'n', 1.50)`, [TRICKY]);
  const [customer] = await tenantQuery<{ id: string }>(
    store,
    `INSERT INTO users (email, password_hash, name, role) VALUES ('c@example.test', 'x', $1, 'customer') RETURNING id`,
    [TRICKY],
  );
  await tenantQuery(
    store,
    `INSERT INTO orders (customer_id, currency, subtotal_cents, total_cents) VALUES ($1, 'EUR', $2, $2)`,
    [customer.id, BIG],
  );
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const exportOf = (storeId = store.id, token = owner.token) => api.get(`/api/stores/${storeId}/export`).set(auth(token));

/** A GET of the export over a real socket: the response, once its headers are in. */
function download(storeId: string, token = owner.token): Promise<http.IncomingMessage> & { req: http.ClientRequest } {
  let req!: http.ClientRequest;
  const p = new Promise<http.IncomingMessage>((resolve, reject) => {
    req = http.get(`${baseUrl}/api/stores/${storeId}/export`, { headers: auth(token) }, resolve);
    req.on('error', reject);
  });
  return Object.assign(p, { req });
}

/** Unpack a tar.gz stream; `keep` says which entries' bytes to keep (the others are counted only). */
async function unpack(body: NodeJS.ReadableStream, keep: (name: string) => boolean = () => true) {
  const files = new Map<string, Buffer>();
  const sizes = new Map<string, number>();
  const order: string[] = [];
  const tar = extract();
  const reading = (async () => {
    for await (const entry of tar) {
      const name = entry.header.name;
      order.push(name);
      const chunks: Buffer[] = [];
      let size = 0;
      const hash = createHash('sha256');
      for await (const chunk of entry) {
        size += (chunk as Buffer).length;
        hash.update(chunk as Buffer);
        if (keep(name)) chunks.push(chunk as Buffer);
      }
      sizes.set(name, size);
      files.set(name, keep(name) ? Buffer.concat(chunks) : Buffer.from(hash.digest('hex')));
    }
  })();
  await pipeline(body, createGunzip(), tar as unknown as NodeJS.WritableStream);
  await reading;
  return { files, sizes, order };
}

/** The export's sessions on that database (waiting for `waitEventType` only, when given). */
const exportSessions = async (database: string, waitEventType?: string) => {
  // A fresh session: pg_stat_activity is a snapshot per transaction.
  const client = new pg.Client({ connectionString: TEST_SERVER_URL });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE application_name = $1 AND datname = $2 AND ($3::text IS NULL OR wait_event_type = $3)`,
      [EXPORT_APPLICATION_NAME, database, waitEventType ?? null],
    );
    return rows[0].n;
  } finally {
    await client.end();
  }
};
/** A session of the store's own role holding one of its tables: an export reading it waits. */
async function holdTable(s: TestStore, table = 'products'): Promise<pg.Client> {
  const locker = await t.pgClient({ ...s.connection });
  await locker.query(`BEGIN; LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`);
  return locker;
}
const exportDirs = async () => (await readdir(tmpdir())).filter((f) => f.startsWith('tenantry-export-')).length;

/** A pg row value as the export renders it: timestamps by their instant, bytea as \x hex, the rest as pg gives it. */
function normalise(value: unknown): unknown {
  if (value instanceof Date) return value.getTime();
  if (Buffer.isBuffer(value)) return `\\x${value.toString('hex')}`;
  return value;
}

describe('the archive', () => {
  test('holds one NDJSON file per table equal to its rows, tricky values exact, and a manifest that matches', async () => {
    const res = await download(store.id);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('application/gzip');
    expect(res.headers['content-disposition']).toMatch(
      new RegExp(`^attachment; filename="${store.slug}-export-\\d{8}T\\d{6}Z\\.tar\\.gz"$`),
    );
    const { files, order } = await unpack(res);

    const manifest = JSON.parse(files.get('manifest.json')!.toString('utf8')) as ExportManifest;
    expect(order[order.length - 1]).toBe('manifest.json');
    expect(manifest).toMatchObject({ format: 'tenantry-export', formatVersion: 1, storeId: store.id });
    const [{ v }] = await tenantQuery<{ v: number }>(store, 'SELECT max(id)::int AS v FROM migrations');
    expect(manifest.schemaVersion).toBe(v);
    expect(Date.parse(manifest.exportedAt)).toBeGreaterThan(Date.now() - 60_000);

    // Every table of the schema but the migrations ledger, each file listed once.
    const tables = await tenantQuery<{ name: string }>(
      store,
      `SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'migrations' ORDER BY 1`,
    );
    expect(manifest.tables.map((x) => x.name).sort()).toEqual(tables.map((x) => x.name));
    expect([...files.keys()].sort()).toEqual(
      [...manifest.tables.map((x) => `tables/${x.name}.ndjson`), 'manifest.json'].sort(),
    );

    for (const table of manifest.tables) {
      const bytes = files.get(table.file)!;
      expect({
        table: table.name,
        sha256: createHash('sha256').update(bytes).digest('hex'),
        bytes: bytes.length,
      }).toEqual({
        table: table.name,
        sha256: table.sha256,
        bytes: table.bytes,
      });
      const lines = bytes.toString('utf8').split('\n');
      expect(lines.pop()).toBe(''); // every line ends with a newline
      const rows = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(rows.length).toBe(table.rows);
      // The same rows as the table holds, column for column, in primary-key order.
      const [{ pk }] = await tenantQuery<{ pk: string[] }>(
        store,
        `SELECT coalesce(array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)), '{}') AS pk
           FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = $1::regclass AND i.indisprimary`,
        [`public.${table.name}`],
      );
      const expected = await tenantQuery(
        store,
        `SELECT * FROM public."${table.name}"${pk.length ? ` ORDER BY ${pk.map((c) => `"${c}"`).join(', ')}` : ''}`,
      );
      expect(rows.length).toBe(expected.length);
      rows.forEach((row, i) => {
        const want = expected[i];
        expect(Object.keys(row)).toEqual(Object.keys(want));
        for (const [column, value] of Object.entries(want)) {
          const got = row[column];
          if (value instanceof Date) expect(Date.parse(got as string)).toBe(value.getTime());
          else expect({ column, value: got }).toEqual({ column, value: normalise(value) });
        }
      });
    }

    // The values JSON or COPY could have mangled, exactly.
    const product = files
      .get('tables/products.ndjson')!
      .toString('utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { sku: string; description: string; name: string })
      .find((p) => p.sku === 'tricky')!;
    expect(product.description).toBe(TRICKY);
    expect(product.name).toBe(TRICKY);
    const order1 = JSON.parse(files.get('tables/orders.ndjson')!.toString('utf8').split('\n')[0]) as Record<
      string,
      unknown
    >;
    expect(order1.total_cents).toBe(BIG);
    const storeRow = JSON.parse(files.get('tables/stores.ndjson')!.toString('utf8').split('\n')[0]) as {
      settings: { note: string; n: number };
      created_at: string;
    };
    expect(storeRow.settings.note).toBe(TRICKY);
    // Timestamps with their microseconds, in UTC.
    expect(storeRow.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$/);

    // Written to the store's audit trail, with what was taken.
    const row = await t.ctx.master.models.AuditLog.findOne({
      where: { storeId: store.id, action: 'store.exported' },
      order: [['createdAt', 'DESC']],
    });
    expect(row?.actorUserId).toBe(owner.user.id);
    expect((row?.data as { rows: number }).rows).toBe(manifest.tables.reduce((n, x) => n + x.rows, 0));

    // Nothing left behind: no session, no spool files.
    await eventually(async () => expect(await exportSessions(store.database)).toBe(0));
    expect(await exportDirs()).toBe(0);
  });

  test('HEAD answers the checks without reading the store', async () => {
    const res = await request(t.app).head(`/api/stores/${store.id}/export`).set(auth(owner.token)).expect(200);
    expect(res.headers['content-type']).toBe('application/gzip');
    expect(await t.ctx.master.models.AuditLog.count({ where: { storeId: store.id, action: 'store.exported' } })).toBe(
      1,
    );
    await request(t.app)
      .head('/api/stores/00000000-0000-4000-8000-000000000000/export')
      .set(auth(owner.token))
      .expect(404);
  });

  test('is one snapshot: rows committed while the export runs are not in it', async () => {
    const s = await createActiveStore(t, { ownerId: owner.user.id });
    // The export stops at audit_log, the first table it reads, after its snapshot was taken; products comes later.
    const locker = await holdTable(s, 'audit_log');
    let res: http.IncomingMessage;
    try {
      const pending = download(s.id);
      await eventually(async () => expect(await exportSessions(s.database, 'Lock')).toBe(1), 10_000);
      await tenantQuery(s, `INSERT INTO products (sku, name, price_cents) VALUES ('late', 'Late', 1)`);
      await locker.query('COMMIT');
      res = await pending;
    } finally {
      await locker.query('ROLLBACK');
    }
    const { files } = await unpack(res);
    const manifest = JSON.parse(files.get('manifest.json')!.toString('utf8')) as ExportManifest;
    expect(manifest.tables.map((x) => x.name).indexOf('audit_log')).toBe(0);
    expect(manifest.tables.find((x) => x.name === 'products')!.rows).toBe(0);
    expect(files.get('tables/products.ndjson')!.length).toBe(0);
    expect((await tenantQuery<{ n: number }>(s, 'SELECT count(*)::int AS n FROM products'))[0].n).toBe(1);
  });

  test('a suspended store can be exported (suspension stops changes, not reading)', async () => {
    await setStoreStatus(t, store.id, 'suspended');
    try {
      const res = await exportOf().buffer(true).expect(200);
      expect(res.headers['content-type']).toBe('application/gzip');
    } finally {
      await setStoreStatus(t, store.id, 'active');
    }
  });
});

describe('who may export', () => {
  test('another owner gets 403, and 404 for a store that does not exist', async () => {
    const other = await registerUser(t.app);
    await createActiveStore(t, { ownerId: other.user.id });
    expectProblem(await exportOf(store.id, other.token), 403, 'FORBIDDEN');
    expectProblem(await exportOf('00000000-0000-4000-8000-000000000000', other.token), 404, 'STORE_NOT_FOUND');
  });

  test('staff and admins of the store get 403: the owner only', async () => {
    for (const role of ['staff', 'admin'] as const) {
      const member = await registerUser(t.app);
      await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: member.user.id, role });
      expectProblem(await exportOf(store.id, member.token), 403, 'FORBIDDEN');
    }
  });

  test('a store token gets 403 WRONG_TOKEN_TYPE, no token 401', async () => {
    const customer = await request(t.app)
      .post('/api/store/auth/register')
      .set('X-Store-Id', store.id)
      .send({ email: 'shopper@example.test', password: 'correct-horse-1', name: 'Shopper' })
      .expect(201);
    expectProblem(await exportOf(store.id, customer.body.token as string), 403, 'WRONG_TOKEN_TYPE');
    expectProblem(await api.get(`/api/stores/${store.id}/export`), 401, 'UNAUTHENTICATED');
  });

  test('a deleted store is 404, a store without a database 409 STORE_NOT_READY', async () => {
    const mine = await createActiveStore(t, { ownerId: owner.user.id });
    await setStoreStatus(t, mine.id, 'deleted');
    expectProblem(await exportOf(mine.id), 404, 'STORE_NOT_FOUND');
    const bare = await api
      .post('/api/stores')
      .set(auth(owner.token))
      .send({ name: 'Bare', slug: `bare-${mine.slug}` });
    expect(bare.status).toBe(201);
    expectProblem(await exportOf(bare.body.id as string), 409, 'STORE_NOT_READY');
  });
});

describe('bounds', () => {
  test('one export per store at a time (409 CONFLICT); the client leaving ends its session, even one waiting on a lock', async () => {
    // Hold the products table so that the first export stops in the middle of its snapshot.
    const locker = await holdTable(store);
    try {
      const dirsBefore = await exportDirs();
      const first = download(store.id);
      first.catch(() => {}); // destroyed below
      await eventually(async () => expect(await exportSessions(store.database, 'Lock')).toBe(1), 10_000);

      expectProblem(await exportOf(), 409, 'CONFLICT');

      first.req.destroy();
      // Terminated although its statement still waits for the lock the test holds.
      await eventually(async () => expect(await exportSessions(store.database)).toBe(0), 10_000);
      await eventually(async () => expect(await exportDirs()).toBe(dirsBefore));
    } finally {
      await locker.query('ROLLBACK');
    }

    // And the store can be exported again.
    await exportOf().buffer(true).expect(200);
  });

  test('50,000 rows stream in bounded memory; a download cut short releases its connection', async () => {
    const big = await createActiveStore(t, { ownerId: owner.user.id });
    await tenantQuery(
      big,
      `INSERT INTO products (sku, name, description, price_cents)
       SELECT 'sku-' || g, 'Product ' || g, repeat(md5(g::text), 100), g FROM generate_series(1, 50000) g`,
    );

    const baseline = process.memoryUsage.rss();
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 5);
    let uncompressed = 0;
    let compressed = 0;
    let manifest: ExportManifest;
    try {
      const res = await download(big.id);
      expect(res.statusCode).toBe(200);
      res.on('data', (chunk: Buffer) => (compressed += chunk.length));
      const { files, sizes } = await unpack(res, (name) => name === 'manifest.json');
      manifest = JSON.parse(files.get('manifest.json')!.toString('utf8')) as ExportManifest;
      for (const size of sizes.values()) uncompressed += size;
    } finally {
      clearInterval(sampler);
    }
    const products = manifest.tables.find((x) => x.name === 'products')!;
    expect(products.rows).toBe(50_000);
    const growth = peak - baseline;
    console.log(
      `export of 50,000 rows: ${(uncompressed / 2 ** 20).toFixed(1)} MiB uncompressed, ${(compressed / 2 ** 20).toFixed(1)} MiB sent; ` +
        `RSS ${(baseline / 2 ** 20).toFixed(0)} → peak ${(peak / 2 ** 20).toFixed(0)} MiB (+${(growth / 2 ** 20).toFixed(1)} MiB)`,
    );
    expect(uncompressed).toBeGreaterThan(150 * 2 ** 20);
    // Server and client in this process, together: far below the archive's size (buffering it would pass it).
    expect(growth).toBeLessThan(uncompressed / 4);

    // Cut short after the first bytes: the session and the spool files go.
    const dirsBefore = await exportDirs();
    const res = await download(big.id);
    await new Promise<void>((resolve) => res.once('data', () => resolve()));
    res.destroy();
    await eventually(async () => expect(await exportSessions(big.database)).toBe(0), 10_000);
    await eventually(async () => expect(await exportDirs()).toBe(dirsBefore), 10_000);
    await exportOf(big.id).buffer(true).expect(200);
  });

  test('at most two exports per owner at a time on an instance (429), then more as they end', async () => {
    const stores = await Promise.all([1, 2, 3].map(() => createActiveStore(t, { ownerId: owner.user.id })));
    const lockers = await Promise.all(stores.slice(0, 2).map((s) => holdTable(s)));
    try {
      const running = stores.slice(0, 2).map((s) => download(s.id));
      for (const r of running) r.catch(() => {});
      await eventually(async () => {
        const n = await Promise.all(stores.slice(0, 2).map((s) => exportSessions(s.database, 'Lock')));
        expect(n).toEqual([1, 1]);
      }, 10_000);
      const refused = await exportOf(stores[2].id);
      expectProblem(refused, 429, 'RATE_LIMITED');
      expect(refused.headers['retry-after']).toEqual(expect.any(String));
      for (const l of lockers) await l.query('ROLLBACK');
      await Promise.all(running.map(async (r) => (await r).resume()));
      await eventually(async () => {
        const n = await Promise.all(stores.slice(0, 2).map((s) => exportSessions(s.database)));
        expect(n).toEqual([0, 0]);
      }, 10_000);
      await exportOf(stores[2].id).buffer(true).expect(200);
    } finally {
      // (A second ROLLBACK only warns.)
      for (const l of lockers) await l.query('ROLLBACK');
    }
  });
});

test('the OpenAPI document describes a gzip download and problem answers', async () => {
  const doc = (await request(t.app).get('/openapi.json').expect(200)).body as {
    paths: Record<string, { get: { responses: Record<string, { content?: Record<string, unknown> }> } }>;
  };
  const op = doc.paths['/api/stores/{id}/export'].get;
  expect(Object.keys(op.responses['200'].content!)).toEqual(['application/gzip']);
  for (const status of ['401', '403', '404', '409', '429', '503'])
    expect(Object.keys(op.responses[status].content!)).toEqual(['application/problem+json']);
});
