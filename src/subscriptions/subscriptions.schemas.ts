import { z } from 'zod';
import { registry } from '../http/openapi';
import { Uuid } from '../http/schemas';

const Limit = z.number().int().nullable();

export const PlanLimitsDto = z
  .object({
    stores: Limit.describe('Live stores one account may own'),
    products: Limit.describe('Live products per store'),
    staff: Limit.describe("Admin and staff accounts per store (the owner's own account not counted)"),
    hostnames: Limit.describe('Custom hostnames per store, pending and verified (null: the platform ceiling of 20)'),
    storageMb: Limit.describe("Size of each store's database, in megabytes (sampled periodically)"),
  })
  .describe('null: unlimited');

export const PlanDto = registry.register(
  'Plan',
  z.object({
    id: z.string(),
    name: z.string(),
    limits: PlanLimitsDto,
    monthlyPriceCents: z.number().int(),
    includedCredits: z.number().int().describe('Credits granted once per billing period'),
  }),
);
export type PlanDto = z.infer<typeof PlanDto>;

export const PlansDto = z.object({ items: z.array(PlanDto) });

export const SubscriptionUsageDto = z
  .object({
    stores: z.number().int().describe('Live stores the account owns'),
    products: z.number().int(),
    staff: z.number().int(),
    hostnames: z.number().int(),
    storageMb: z.number().int(),
  })
  .describe(
    'What the account uses against the limits: `stores` counts its stores, the others are the highest of any one of its stores',
  );
export type SubscriptionUsage = z.infer<typeof SubscriptionUsageDto>;

export const SubscriptionDto = registry.register(
  'Subscription',
  z.object({
    plan: PlanDto.describe('The plan whose limits apply now (free while past due or cancelled)'),
    status: z
      .enum(['active', 'past_due', 'canceled'])
      .describe("The subscription's state (`active` for an account on the free plan without one)"),
    subscribedPlanId: z.string().describe('The plan subscribed to (differs from plan.id while past due or cancelled)'),
    provider: z.enum(['manual', 'stripe']).nullable(),
    currentPeriodEnd: z.string().nullable(),
    pending: z
      .object({
        planId: z.string(),
        reference: z
          .string()
          .describe(
            "Put into the Stripe subscription's metadata as `tenantry_reference`: its signed webhook applies the plan",
          ),
        requestedAt: z.string(),
      })
      .nullable()
      .describe('A change waiting for the payment provider'),
    usage: SubscriptionUsageDto,
  }),
);
export type SubscriptionDto = z.infer<typeof SubscriptionDto>;

export const ChangePlanBody = z.strictObject({
  planId: z.string().min(1).max(64).describe('A plan of GET /api/plans'),
});
export type ChangePlanInput = z.infer<typeof ChangePlanBody>;

export const UserIdParams = z.object({ id: Uuid });
