import { z } from 'zod';
import { registry, trimmedString } from '../http/openapi';
import { pageOf } from '../http/pagination';

/** What one credit costs when bought: 1 credit = 1 euro cent. */
export const CREDIT_PRICE = Object.freeze({ amountCents: 1, currency: 'EUR' });
/** The most credits one purchase buys (€10,000 at the price above). */
export const MAX_PURCHASE = 1_000_000;
/** Stripe refuses charges under €0.50, so a card purchase buys at least this many credits. */
export const MIN_STRIPE_PURCHASE = 50;
export const MAX_QUANTITY = 100_000;
export const MAX_ADJUSTMENT = 1_000_000_000;

const IdempotencyKey = z
  .string()
  .min(1)
  .max(200)
  .describe('Chosen by the client, unique per store: the same key again returns the first result and changes nothing.');

export const PurchaseBody = z.strictObject({
  amount: z
    .number()
    .int()
    .min(1)
    .max(MAX_PURCHASE)
    .describe(
      `Credits to buy (1 credit = 1 euro cent); card payments (PAYMENTS_PROVIDER=stripe) buy at least ${MIN_STRIPE_PURCHASE}, fewer → 400`,
    ),
  idempotencyKey: IdempotencyKey,
});
export const SpendBody = z.strictObject({
  service: z
    .string()
    .regex(/^[a-z0-9_.-]{1,64}$/, 'must be a service of GET /api/credits/costs')
    // A pattern, not an enum: the price list is a table of the master DB (service_credit_costs, whose CHECK
    // this is) and changes without a release.
    .describe(
      'A service of GET /api/credits/costs (a table that changes without a new API version, hence no enum): another name → 400',
    ),
  quantity: z.number().int().min(1).max(MAX_QUANTITY),
  idempotencyKey: IdempotencyKey,
});
export const AdjustBody = z.strictObject({
  amount: z
    .number()
    .int()
    .min(-MAX_ADJUSTMENT)
    .max(MAX_ADJUSTMENT)
    .refine((n) => n !== 0, 'must not be 0')
    .openapi({ not: { const: 0 } })
    .describe('Credits to add (positive) or take away (negative), not 0; the balance never goes below 0'),
  reason: trimmedString(1, 500),
  idempotencyKey: IdempotencyKey.optional(),
});

export const CreditTransactionDto = registry.register(
  'CreditTransaction',
  z.object({
    id: z.uuid(),
    type: z.enum(['purchase', 'spend', 'refund', 'adjustment']),
    status: z.enum(['pending', 'completed', 'failed']),
    amount: z.number().int().describe('Signed: spends are negative'),
    balanceAfter: z.number().int().nullable().describe('null while the transaction is not completed'),
    service: z.string().nullable(),
    quantity: z.number().int().nullable(),
    reason: z.string().nullable(),
    idempotencyKey: z.string().nullable(),
    createdAt: z.string(),
  }),
);

export const CreditChangeDto = z.object({
  transaction: CreditTransactionDto,
  balance: z
    .number()
    .int()
    .describe(
      "The store's balance right after this transaction (for a pending purchase: the balance now, which it has not changed yet)",
    ),
});

export const PaymentDto = z.object({
  provider: z.enum(['manual', 'stripe']),
  reference: z
    .string()
    .nullable()
    .describe(
      'Stripe: put it in the PaymentIntent or Checkout Session metadata as `tenantry_reference`; the webhook completes the purchase by it',
    ),
  amountCents: z.number().int(),
  currency: z.string(),
  status: z.enum(['pending', 'succeeded', 'failed', 'refunded']),
});
export const PurchaseResultDto = CreditChangeDto.extend({ payment: PaymentDto });

export const CreditsDto = z.object({ balance: z.number().int(), transactions: pageOf(CreditTransactionDto) });

export const CostsDto = z.object({
  items: z.array(z.object({ service: z.string(), costPerUnit: z.number().int(), description: z.string() })),
  creditPrice: z.object({ amountCents: z.number().int(), currency: z.string() }),
});

export const WebhookAckDto = z.object({
  received: z.literal(true),
  ignored: z.boolean().optional(),
  reason: z.string().optional(),
});

export type PurchaseInput = z.infer<typeof PurchaseBody>;
export type SpendInput = z.infer<typeof SpendBody>;
export type AdjustInput = z.infer<typeof AdjustBody>;
export type LedgerEntry = z.infer<typeof CreditTransactionDto>;
export type Payment = z.infer<typeof PaymentDto>;
export type WebhookAck = z.infer<typeof WebhookAckDto>;
