import { z } from 'zod';
import { registry } from '../http/openapi';

export const CreateOrderBody = z.strictObject({
  items: z
    .array(
      z.strictObject({
        productId: z.uuid({ message: 'must be a UUID' }),
        quantity: z.number().int().min(1).max(10_000),
      }),
    )
    .min(1, 'an order needs at least one item')
    .max(100),
});
export const OrderIdParams = z.object({ id: z.uuid({ message: 'must be a UUID' }) });

export const OrderDto = registry.register(
  'Order',
  z.object({
    id: z.uuid(),
    customerId: z.uuid(),
    status: z.enum(['placed', 'paid', 'shipped', 'cancelled', 'refunded']),
    currency: z.string(),
    subtotalCents: z.number().int(),
    totalCents: z.number().int(),
    items: z.array(
      z.object({
        productId: z.uuid(),
        sku: z.string(),
        name: z.string(),
        quantity: z.number().int(),
        unitPriceCents: z.number().int(),
        lineTotalCents: z.number().int(),
      }),
    ),
    createdAt: z.string(),
  }),
);
export type Order = z.infer<typeof OrderDto>;
export type CreateOrderInput = z.infer<typeof CreateOrderBody>;
