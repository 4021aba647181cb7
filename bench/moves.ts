/**
 * The write pause of a store move (issue 15): a store with `products` products (and their inventory) moved
 * from one tenant server to the other and back, `rounds` times, while writers update its products through the
 * storefront API: `npm run bench -- --only moves [--products 100000] [--rounds 4] [--writers 4]` (Postgres on
 * 127.0.0.1:5432 and 127.0.0.1:5433, Redis). Printed per move: the write pause (from holding the
 * store's requests to releasing them) and where it went, the copy's time, the changes replayed, and what the
 * writers saw (answers, 503 TENANT_MIGRATING, the slowest write). Goal: a pause under 1 s.
 */
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { processMove, tendMoves } from '../src/moves/move-runner';
import { requestMove } from '../src/moves/moves.service';
import { registerUser, startTestApp } from '../test/helpers/app';
import { adminQuery, SECOND_SERVER_URL, TEST_SERVER_URL } from '../test/helpers/db';
import { auth } from '../test/helpers/stores';
import { createActiveStore, dropTestTenants, tenantQuery } from '../test/helpers/tenants';
import { seedCatalogue } from './store-fixture';
import { serverKeyOfUrl } from '../src/db/tenant-servers';

export async function movesBenchmark({
  products,
  rounds,
  writers,
}: {
  products: number;
  rounds: number;
  writers: number;
}): Promise<void> {
  const servers = [TEST_SERVER_URL, SECOND_SERVER_URL];
  const t = await startTestApp('bench_moves', {
    TENANT_SERVERS: servers.join(','),
    // Kept sources are dropped by the bench itself after each move.
    STORE_MOVE_KEEP_HOURS: '0',
  });
  try {
    const owner = await registerUser(t.app);
    const store = await createActiveStore(t, { ownerId: owner.user.id, server: TEST_SERVER_URL });
    await seedCatalogue(store, products);
    const ids = (await tenantQuery<{ id: string }>(store, `SELECT id FROM products ORDER BY random() LIMIT 2000`)).map(
      (r) => r.id,
    );

    const pauses: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      const db = (await t.ctx.master.models.StoreDatabase.findByPk(store.id))!;
      const to = servers.map(serverKeyOfUrl).find((k) => k !== db.server)!;
      // Writers: product updates through the storefront API, as fast as they are answered.
      let stopped = false;
      const seen = { ok: 0, migrating: 0, other: 0, slowestMs: 0 };
      const write = async () => {
        while (!stopped) {
          const started = performance.now();
          const res = await request(t.app)
            .patch(`/api/store/products/${ids[Math.floor(Math.random() * ids.length)]}`)
            .set('X-Store-Id', store.id)
            .set(auth(owner.token))
            .send({ stock: Math.floor(Math.random() * 100) });
          seen.slowestMs = Math.max(seen.slowestMs, performance.now() - started);
          if (res.status === 200) seen.ok++;
          else if (res.status === 503 && res.body?.code === 'TENANT_MIGRATING') seen.migrating++;
          else seen.other++;
        }
      };
      const load = Promise.all(Array.from({ length: writers }, write));
      await new Promise((r) => setTimeout(r, 500));
      const { moveId } = await requestMove(t.ctx, { userId: null, label: 'bench' }, store.id, to);
      const started = performance.now();
      const result = (await processMove(t.ctx, moveId)) as {
        rows: number;
        changes: number;
        writePauseMs: number;
        pauseSteps: Record<string, number>;
      };
      const moveMs = performance.now() - started;
      await new Promise((r) => setTimeout(r, 300));
      stopped = true;
      await load;
      pauses.push(result.writePauseMs);
      console.log(
        `move ${round} (${db.server} -> ${to}): write pause ${result.writePauseMs} ms ${JSON.stringify(result.pauseSteps)}; ` +
          `move ${(moveMs / 1000).toFixed(2)} s, ${result.rows} rows copied, ${result.changes} changes replayed; ` +
          `writes ${seen.ok} ok, ${seen.migrating} TENANT_MIGRATING, ${seen.other} other, slowest ${Math.round(seen.slowestMs)} ms`,
      );
      // The source kept by the move (STORE_MOVE_KEEP_HOURS=0) dropped, so the next move back can use its name.
      await tendMoves(t.ctx);
    }
    const sorted = [...pauses].sort((a, b) => a - b);
    console.log(
      `${products} products, ${writers} writers: write pause median ${sorted[Math.floor(sorted.length / 2)]} ms, ` +
        `max ${sorted[sorted.length - 1]} ms over ${rounds} moves (goal < 1000 ms)`,
    );
  } finally {
    // Databases the moves made on either server (the store's own current one goes with the test tenants).
    const made = await t.ctx.master.sequelize
      .query<{ server: string; name: string; role: string }>(
        `SELECT target_server AS server, target_database AS name, role FROM store_moves WHERE target_database IS NOT NULL`,
        { type: QueryTypes.SELECT },
      )
      .catch(() => []);
    await t.close();
    for (const m of made) {
      const url = servers.find((u) => serverKeyOfUrl(u) === m.server)!;
      await adminQuery(`DROP DATABASE IF EXISTS "${m.name}" WITH (FORCE)`, url).catch(() => {});
      await adminQuery(`DROP ROLE IF EXISTS "${m.role}"`, url).catch(() => {});
    }
    await dropTestTenants();
  }
}
