/**
 * The server the benchmark drives: the real app, plus two baselines in the same process so that all
 * scenarios share one machine state:
 *   GET /bench/raw         the product-list query on one fixed pg pool: express + pg, no tenancy, no ORM;
 *   GET /bench/untenanted  the store API's own handler on one fixed handle, behind the app's middleware,
 *                          without tenant resolution.
 */
import express from 'express';
import pg from 'pg';
import { createApp } from '../src/app';
import { config } from '../src/config';
import { createContext } from '../src/context';
import { ConnectionBudget } from '../src/db/connection-budget';
import { runInTenant } from '../src/db/tenant-context';
import { TenantHandle, type TenantConnection } from '../src/db/tenant-handle';
import { ApiRouter } from '../src/http/api-router';
import { ProductListQuery } from '../src/storefront/products.schemas';
import { listProducts, productListSql, toProduct } from '../src/storefront/products.service';
import { toPage } from '../src/http/pagination';
import { startWorkers } from '../src/worker';

async function main() {
  const ctx = await createContext();
  const workers = config.worker ? await startWorkers(ctx) : undefined;
  const storeId = process.env.BENCH_FIXED_STORE ?? '00000000-0000-4000-8000-000000000000';
  const connection = JSON.parse(process.env.BENCH_FIXED_CONNECTION ?? '{}') as TenantConnection;
  const { poolMax, idleMs, acquireTimeoutMs } = config.tenant;

  const rawPool = new pg.Pool({ ...connection, max: poolMax, idleTimeoutMillis: idleMs });
  const fixed = new TenantHandle(storeId, storeId, connection, new ConnectionBudget(poolMax, acquireTimeoutMs), {
    poolMax,
    idleMs,
    acquireTimeoutMs,
    connectTimeoutMs: 1000,
  });

  const untenanted = new ApiRouter('/bench');
  untenanted.get(
    '/untenanted',
    { operationId: 'benchUntenanted', summary: 'benchmark baseline', query: ProductListQuery },
    ({ query }) =>
      runInTenant({ storeId, handle: fixed, manager: ctx.tenants }, () =>
        listProducts({ limit: query.limit, cursor: query.cursor, includeInactive: false }),
      ),
  );

  const outer = express();
  outer.get('/bench/raw', async (_req, res) => {
    const { rows } = await rawPool.query(productListSql({ includeInactive: false, after: null }, [21]), [21]);
    res.json(toPage(rows, 20, toProduct));
  });
  outer.get('/bench/pools', (_req, res) => {
    const { perStore: _perStore, fenced: _fenced, ...stats } = ctx.tenants.stats();
    res.json(stats);
  });
  outer.use(createApp(ctx, { extraRouters: [untenanted] }));
  const server = outer.listen(config.port, () => process.send?.({ ready: true }));
  process.on('SIGTERM', () => {
    server.close();
    void Promise.all([rawPool.end(), fixed.close(), workers?.close()])
      .then(() => ctx.close())
      .finally(() => process.exit(0));
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
