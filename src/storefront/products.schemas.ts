import { z } from 'zod';
import { registry, trimmedString } from '../http/openapi';
import { ListQuery } from '../http/pagination';

export const Currency = z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as EUR');
const Sku = trimmedString(1, 64);

export const ProductIdParams = z.object({ id: z.uuid({ message: 'must be a UUID' }) });
export const ProductListQuery = ListQuery.extend({
  /** admin/staff only: include inactive products */
  includeInactive: z.enum(['true', 'false']).optional(),
});

export const CreateProductBody = z.strictObject({
  sku: Sku,
  name: trimmedString(1, 200),
  description: z.string().max(10000).optional(),
  priceCents: z.number().int().min(0).max(2_000_000_000),
  currency: Currency.optional(),
  stock: z.number().int().min(0).max(2_000_000_000).optional(),
  active: z.boolean().optional(),
});
export const UpdateProductBody = CreateProductBody.partial()
  .refine((b) => Object.keys(b).length > 0, 'give at least one field to change')
  .openapi({ minProperties: 1 });

export const ProductDto = registry.register(
  'Product',
  z.object({
    id: z.uuid(),
    sku: z.string(),
    name: z.string(),
    description: z.string(),
    priceCents: z.number().int(),
    currency: z.string(),
    stock: z.number().int(),
    active: z.boolean(),
    createdAt: z.string(),
    updatedAt: z.string(),
  }),
);

export type Product = z.infer<typeof ProductDto>;
export type CreateProductInput = z.infer<typeof CreateProductBody>;
export type UpdateProductInput = z.infer<typeof UpdateProductBody>;
