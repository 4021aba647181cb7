import { QueryTypes, type Transaction } from 'sequelize';
import { rethrowTaken } from '../db/errors';
import { tenantDb } from '../db/tenant-context';
import { ErrorCode, fail } from '../lib/errors';
import { decodeCursor, olderThan, toPage, type Page, type Position } from '../http/pagination';
import type { TenantModels } from '../models/tenant';
import { requireRoomInStore, type StoreLimits } from '../subscriptions/store-limits';
import type { CreateProductInput, Product, UpdateProductInput } from './products.schemas';
import type { StoreActor } from './store-access';

interface ProductRow {
  id: string;
  sku: string;
  name: string;
  description: string;
  priceCents: number;
  currency: string;
  stock: number;
  active: boolean;
  createdAt: Date | string;
  updatedAt: Date | string;
  cursorTs: string;
}

const SELECT_PRODUCT = `
  SELECT p.id, p.sku, p.name, p.description, p.price_cents AS "priceCents", p.currency,
         coalesce(i.stock, 0) AS stock, p.active, p.created_at AS "createdAt", p.updated_at AS "updatedAt",
         p.created_at::text AS "cursorTs"
    FROM products p LEFT JOIN inventory i ON i.product_id = p.id`;

const iso = (d: Date | string) => (d instanceof Date ? d : new Date(d)).toISOString();

export function toProduct(r: ProductRow): Product {
  return {
    id: r.id,
    sku: r.sku,
    name: r.name,
    description: r.description,
    priceCents: r.priceCents,
    currency: r.currency,
    stock: r.stock,
    active: r.active,
    createdAt: iso(r.createdAt),
    updatedAt: iso(r.updatedAt),
  };
}

const canSeeInactive = (actor?: StoreActor) => actor?.role === 'admin' || actor?.role === 'staff';

/** The catalogue query, newest first: `values` holds the row limit ($1); the keyset position is appended when paging on. */
export function productListSql(opts: { includeInactive: boolean; after: Position | null }, values: unknown[]): string {
  let where = 'p.deleted_at IS NULL';
  if (!opts.includeInactive) where += ' AND p.active';
  if (opts.after) where += ` AND ${olderThan('p', opts.after, values)}`;
  return `${SELECT_PRODUCT} WHERE ${where} ORDER BY p.created_at DESC, p.id DESC LIMIT $1`;
}

/** The catalogue: plain rows straight from pg (this is the hottest read path). */
export async function listProducts(opts: {
  limit: number;
  cursor?: string;
  includeInactive: boolean;
}): Promise<Page<Product>> {
  const after = decodeCursor(opts.cursor);
  const values: unknown[] = [opts.limit + 1];
  const rows = await tenantDb.query<ProductRow>(
    productListSql({ includeInactive: opts.includeInactive, after }, values),
    values,
  );
  return toPage(rows, opts.limit, toProduct);
}

export async function getProduct(id: string, actor?: StoreActor): Promise<Product> {
  const rows = await tenantDb.query<ProductRow>(`${SELECT_PRODUCT} WHERE p.id = $1 AND p.deleted_at IS NULL`, [id]);
  const row = rows[0];
  if (!row || (!row.active && !canSeeInactive(actor))) throw fail(ErrorCode.NOT_FOUND, 'No such product');
  return toProduct(row);
}

async function readInTransaction(t: Transaction, m: TenantModels, id: string): Promise<Product> {
  const rows = await m.Product.sequelize!.query<ProductRow>(`${SELECT_PRODUCT} WHERE p.id = $1`, {
    bind: [id],
    type: QueryTypes.SELECT,
    transaction: t,
  });
  return toProduct(rows[0]);
}

const skuTaken = rethrowTaken('Another product already has this SKU');

/** Add a product, within the plan's limit of live products (`limits`: the store's, see limitsOfStore). */
export async function createProduct(
  input: CreateProductInput,
  actor: StoreActor,
  limits: StoreLimits,
): Promise<Product> {
  return tenantDb
    .transaction(async (t, m) => {
      await requireRoomInStore(m.Product.sequelize!, t, 'products', limits);
      const { stock = 0, ...fields } = input;
      const product = await m.Product.create(fields, { transaction: t });
      await m.Inventory.create({ productId: product.id, stock }, { transaction: t });
      await m.AuditLog.create(
        {
          actorId: actor.id,
          actorType: actor.kind,
          action: 'product.created',
          targetType: 'product',
          targetId: product.id,
        },
        { transaction: t },
      );
      return readInTransaction(t, m, product.id);
    })
    .catch(skuTaken);
}

export async function updateProduct(id: string, input: UpdateProductInput, actor: StoreActor): Promise<Product> {
  return tenantDb
    .transaction(async (t, m) => {
      const product = await m.Product.findOne({ where: { id, deletedAt: null }, transaction: t, lock: t.LOCK.UPDATE });
      if (!product) throw fail(ErrorCode.NOT_FOUND, 'No such product');
      const { stock, ...fields } = input;
      if (Object.keys(fields).length) await product.update(fields, { transaction: t });
      if (stock !== undefined) await m.Inventory.upsert({ productId: id, stock }, { transaction: t });
      await m.AuditLog.create(
        {
          actorId: actor.id,
          actorType: actor.kind,
          action: 'product.updated',
          targetType: 'product',
          targetId: id,
          data: { fields: Object.keys(input) },
        },
        { transaction: t },
      );
      return readInTransaction(t, m, id);
    })
    .catch(skuTaken);
}

/** Soft delete: the row stays for the orders that name it. */
export async function deleteProduct(id: string, actor: StoreActor): Promise<void> {
  await tenantDb.transaction(async (t, m) => {
    const [count] = await m.Product.update(
      { deletedAt: new Date(), active: false },
      { where: { id, deletedAt: null }, transaction: t },
    );
    if (count === 0) throw fail(ErrorCode.NOT_FOUND, 'No such product');
    await m.AuditLog.create(
      { actorId: actor.id, actorType: actor.kind, action: 'product.deleted', targetType: 'product', targetId: id },
      { transaction: t },
    );
  });
}

/**
 * Undo a soft delete. The product comes back inactive: the delete cleared `active`, and whether it was on sale
 * before is not kept, so staff put it back on sale themselves (PATCH). Its SKU may since belong to another
 * product: the unique index among live products decides (409 SKU_TAKEN).
 */
export async function restoreProduct(id: string, actor: StoreActor, limits: StoreLimits): Promise<Product> {
  return tenantDb
    .transaction(async (t, m) => {
      await requireRoomInStore(m.Product.sequelize!, t, 'products', limits);
      const product = await m.Product.findByPk(id, { transaction: t, lock: t.LOCK.UPDATE });
      if (!product) throw fail(ErrorCode.NOT_FOUND, 'No such product');
      if (product.deletedAt === null) throw fail(ErrorCode.CONFLICT, 'This product is not deleted');
      await product.update({ deletedAt: null }, { transaction: t });
      await m.AuditLog.create(
        { actorId: actor.id, actorType: actor.kind, action: 'product.restored', targetType: 'product', targetId: id },
        { transaction: t },
      );
      return readInTransaction(t, m, id);
    })
    .catch(skuTaken);
}

export { canSeeInactive };
