import { QueryTypes } from 'sequelize';
import { tenantDb } from '../db/tenant-context';
import { decodeCursor, olderThan, toPage, type Page } from '../http/pagination';
import { ErrorCode, fail } from '../lib/errors';
import type { CreateOrderInput, Order } from './orders.schemas';
import type { StoreActor } from './store-access';

interface OrderRow {
  id: string;
  customerId: string;
  status: Order['status'];
  currency: string;
  subtotalCents: string;
  totalCents: string;
  createdAt: Date | string;
  cursorTs: string;
  items: Order['items'] | null;
}

const SELECT_ORDER = `
  SELECT o.id, o.customer_id AS "customerId", o.status, o.currency, o.subtotal_cents AS "subtotalCents",
         o.total_cents AS "totalCents", o.created_at AS "createdAt", o.created_at::text AS "cursorTs",
         (SELECT json_agg(json_build_object('productId', i.product_id, 'sku', i.sku, 'name', i.name, 'quantity', i.quantity,
                 'unitPriceCents', i.unit_price_cents, 'lineTotalCents', i.line_total_cents) ORDER BY i.sku)
            FROM order_items i WHERE i.order_id = o.id) AS items
    FROM orders o`;

const toOrder = (r: OrderRow): Order => ({
  id: r.id,
  customerId: r.customerId,
  status: r.status,
  currency: r.currency,
  subtotalCents: Number(r.subtotalCents),
  totalCents: Number(r.totalCents),
  items: r.items ?? [],
  createdAt: new Date(r.createdAt).toISOString(),
});

interface LockedProduct {
  id: string;
  sku: string;
  name: string;
  priceCents: number;
  currency: string;
  active: boolean;
  stock: number;
}

/**
 * Place an order at the database's prices. The inventory rows are locked (in id order, so concurrent orders
 * cannot deadlock) and decremented in the same transaction: either every line is in stock and sold, or
 * nothing changes.
 */
export async function placeOrder(input: CreateOrderInput, actor: StoreActor): Promise<Order> {
  if (actor.kind !== 'store_user' || actor.role !== 'customer')
    throw fail(ErrorCode.FORBIDDEN, 'Orders are placed by customers of the store');
  const wanted = new Map<string, number>();
  for (const { productId, quantity } of input.items) wanted.set(productId, (wanted.get(productId) ?? 0) + quantity);
  const ids = [...wanted.keys()].sort();

  const orderId = await tenantDb.transaction(async (t, m) => {
    const sequelize = m.Order.sequelize!;
    const products = await sequelize.query<LockedProduct>(
      `SELECT p.id, p.sku, p.name, p.price_cents AS "priceCents", p.currency, p.active, i.stock
         FROM products p JOIN inventory i ON i.product_id = p.id
        WHERE p.id = ANY($1::uuid[]) AND p.deleted_at IS NULL
        ORDER BY p.id
          FOR UPDATE OF i`,
      { bind: [ids], type: QueryTypes.SELECT, transaction: t },
    );
    const byId = new Map(products.map((p) => [p.id, p]));
    const missing = ids.filter((id) => !byId.get(id)?.active);
    if (missing.length) throw fail(ErrorCode.NOT_FOUND, `No such product: ${missing.join(', ')}`);
    const short = products.filter((p) => p.stock < (wanted.get(p.id) ?? 0));
    if (short.length) {
      throw fail(
        ErrorCode.OUT_OF_STOCK,
        `Not enough stock for: ${short.map((p) => `${p.sku} (${p.stock} left)`).join(', ')}`,
      );
    }
    const currencies = new Set(products.map((p) => p.currency));
    if (currencies.size > 1)
      throw fail(ErrorCode.VALIDATION_FAILED, 'All products of one order must have the same currency');

    const lines = products.map((p) => {
      const quantity = wanted.get(p.id)!;
      return {
        productId: p.id,
        sku: p.sku,
        name: p.name,
        quantity,
        unitPriceCents: p.priceCents,
        lineTotalCents: quantity * p.priceCents,
      };
    });
    const subtotal = lines.reduce((sum, l) => sum + l.lineTotalCents, 0);
    await sequelize.query(
      `UPDATE inventory i SET stock = i.stock - w.qty, updated_at = now()
         FROM unnest($1::uuid[], $2::int[]) AS w(id, qty) WHERE i.product_id = w.id`,
      { bind: [lines.map((l) => l.productId), lines.map((l) => l.quantity)], transaction: t },
    );
    const order = await m.Order.create(
      { customerId: actor.id, currency: [...currencies][0], subtotalCents: subtotal, totalCents: subtotal },
      { transaction: t },
    );
    await m.OrderItem.bulkCreate(
      lines.map((l) => ({ ...l, orderId: order.id })),
      { transaction: t },
    );
    await m.AuditLog.create(
      {
        actorId: actor.id,
        actorType: actor.kind,
        action: 'order.placed',
        targetType: 'order',
        targetId: order.id,
        data: { totalCents: subtotal },
      },
      { transaction: t },
    );
    return order.id;
  });
  return getOrder(orderId, actor);
}

/** Customers see their own orders; staff and admins see every order. */
export async function listOrders(actor: StoreActor, opts: { limit: number; cursor?: string }): Promise<Page<Order>> {
  const after = decodeCursor(opts.cursor);
  const values: unknown[] = [opts.limit + 1];
  const where: string[] = [];
  if (actor.role === 'customer') {
    values.push(actor.id);
    where.push(`o.customer_id = $${values.length}`);
  }
  if (after) where.push(olderThan('o', after, values));
  const rows = await tenantDb.query<OrderRow>(
    `${SELECT_ORDER} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY o.created_at DESC, o.id DESC LIMIT $1`,
    values,
  );
  return toPage(rows, opts.limit, toOrder);
}

export async function getOrder(id: string, actor: StoreActor): Promise<Order> {
  const rows = await tenantDb.query<OrderRow>(`${SELECT_ORDER} WHERE o.id = $1`, [id]);
  const row = rows[0];
  // Another customer's order is as absent as a missing one.
  if (!row || (actor.role === 'customer' && row.customerId !== actor.id))
    throw fail(ErrorCode.NOT_FOUND, 'No such order');
  return toOrder(row);
}
