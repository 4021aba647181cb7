import { z } from 'zod';
import { registry } from '../http/openapi';

/** The longest range one usage request covers, in days (both ends included). */
export const MAX_USAGE_DAYS = 366;
/** The range without `from`: the last 30 days up to `to` (today, UTC, by default). */
export const DEFAULT_USAGE_DAYS = 30;

const Day = z.iso.date({ message: 'must be a date (YYYY-MM-DD)' });

export const daysBetween = (from: string, to: string) =>
  Math.round((Date.parse(to) - Date.parse(from)) / 86400_000) + 1;

export const UsageQuery = z
  .strictObject({
    from: Day.optional().describe(`First day (UTC), included; default: ${DEFAULT_USAGE_DAYS - 1} days before \`to\``),
    to: Day.optional().describe('Last day (UTC), included; default: today'),
  })
  .superRefine((q, issue) => {
    if (!q.from || !q.to) return;
    if (q.from > q.to) issue.addIssue({ code: 'custom', path: ['from'], message: 'must not be after `to`' });
    else if (daysBetween(q.from, q.to) > MAX_USAGE_DAYS)
      issue.addIssue({
        code: 'custom',
        path: ['to'],
        message: `must be at most ${MAX_USAGE_DAYS} days after \`from\``,
      });
  });
export type UsageQuery = z.infer<typeof UsageQuery>;

const Used = z
  .object({
    used: z.number().int().nullable().describe("Now; null when the store's database could not be asked"),
    limit: z.number().int().nullable().describe("The plan's limit; null: unlimited"),
  })
  .describe('A count against its limit');

export const UsageDto = registry.register(
  'StoreUsage',
  z.object({
    storeId: z.uuid(),
    from: z.iso.date(),
    to: z.iso.date(),
    credits: z.object({
      total: z.number().int().describe('Credits spent in the range'),
      items: z
        .array(
          z.object({
            day: z.iso.date(),
            service: z.string(),
            quantity: z.number().int(),
            credits: z.number().int(),
          }),
        )
        .describe('Credits spent per service per day (UTC), days without spending left out'),
    }),
    requests: z.object({
      total: z.number().int(),
      items: z
        .array(z.object({ day: z.iso.date(), count: z.number().int() }))
        .describe('Store API requests per day (UTC), every day of the range'),
    }),
    database: z.object({
      sizeBytes: z.number().int().nullable().describe("The store's database size; null when unknown"),
      sampledAt: z.iso.datetime().nullable().describe('When it was measured'),
    }),
    plan: z.object({ id: z.string(), name: z.string() }),
    limits: z
      .object({
        stores: Used.describe("The owner's stores, against the owner's plan"),
        products: Used,
        staff: Used,
        hostnames: Used.describe('Custom hostnames (pending and verified)'),
        storageMb: Used.describe("The database size in MB (rounded up), against the plan's storage"),
      })
      .describe("What the store (and its owner) uses, against the owner's plan"),
  }),
);
export type UsageDto = z.infer<typeof UsageDto>;
