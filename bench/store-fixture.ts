import { adminQuery, urlFor } from '../test/helpers/db';
import { tenantQuery, type TestStore } from '../test/helpers/tenants';

/**
 * The store the backups and moves benchmarks work on: `products` products (about 170 bytes of text each) and
 * one inventory row per product, vacuumed and analysed. Imported only by those benchmarks: it brings the test
 * harness (test/helpers/env.ts) with it.
 */
export async function seedCatalogue(store: TestStore, products: number): Promise<void> {
  await tenantQuery(
    store,
    `INSERT INTO products (sku, name, description, price_cents)
     SELECT 'sku-' || i, 'Product ' || i, repeat('A fine product. ', 8) || i, i FROM generate_series(1, $1::int) i`,
    [products],
  );
  await tenantQuery(store, `INSERT INTO inventory (product_id, stock) SELECT id, 10 FROM products`);
  await adminQuery(`VACUUM ANALYZE`, urlFor(store.database));
}
