import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { logger } from '../lib/logger';
import { forgetStoreLimits } from './store-limits';

/** Stores' databases sampled at once by one sweep: each takes one tenant connection for one short query. */
const SAMPLE_CONCURRENCY = 4;

/**
 * The maintenance sweep of database sizes: every active store's database is asked its own size
 * (pg_database_size, through the store's handle and its connection budget), written to the store's row in the
 * master (storage_bytes, storage_sampled_at). Requests never measure: writes are refused from the last sample
 * (see refuseWritesOverStorage). A store whose database does not answer keeps its previous sample.
 */
export async function sampleStorage(ctx: AppContext): Promise<{ sampled: number; failed: number }> {
  const stores = await ctx.master.sequelize.query<{ id: string }>(
    `SELECT s.id FROM stores s JOIN store_databases d ON d.store_id = s.id
      WHERE s.status = 'active' AND d.status = 'ready' ORDER BY s.storage_sampled_at NULLS FIRST, s.id`,
    { type: QueryTypes.SELECT },
  );
  let sampled = 0;
  let failed = 0;
  let next = 0;
  const worker = async () => {
    while (next < stores.length) {
      const storeId = stores[next++].id;
      try {
        const handle = await ctx.tenants.forStore(storeId);
        const [row] = await ctx.tenants.guard(handle, (handle) =>
          handle.query<{ bytes: string }>('SELECT pg_database_size(current_database())::text AS bytes'),
        );
        await ctx.master.sequelize.query(
          'UPDATE stores SET storage_bytes = $2::bigint, storage_sampled_at = now() WHERE id = $1::uuid',
          { bind: [storeId, row.bytes] },
        );
        sampled++;
      } catch (err) {
        failed++;
        logger.warn({ err, storeId }, "Could not sample a store's database size; its previous sample stands");
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(SAMPLE_CONCURRENCY, stores.length) }, worker));
  forgetStoreLimits();
  return { sampled, failed };
}
