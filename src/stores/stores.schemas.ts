import { z } from 'zod';
import { registry, trimmedString } from '../http/openapi';
import { StoreIdParams } from '../http/schemas';

export const Slug = z.string().regex(/^[a-z0-9-]{3,63}$/, 'must be 3–63 characters of a-z, 0-9 and -');
export const CreateStoreBody = z.strictObject({ name: trimmedString(1, 200), slug: Slug });
/** `{}` is a valid rename that changes nothing (API.md: `{ name? }`). */
export const UpdateStoreBody = z.strictObject({ name: trimmedString(1, 200).optional() });
/** No status: the stores in use (the store dropdown). `deleted`: the owner's stores that can still be restored. */
export const ListStoresQuery = z.strictObject({ status: z.enum(['deleted']).optional() });
/** A store as its member sees it in lists (the sign-in answer, the store dropdown). */
export const StoreSummaryDto = registry.register(
  'StoreSummary',
  z.object({
    id: z.uuid(),
    name: z.string(),
    slug: z.string(),
    status: z.enum(['pending_database', 'provisioning', 'active', 'provisioning_failed', 'suspended', 'deleted']),
    role: z.enum(['owner', 'admin', 'staff']),
  }),
);
export const StoreListItemDto = registry.register(
  'StoreListItem',
  StoreSummaryDto.extend({
    deletedAt: z.string().optional().describe('Only in ?status=deleted: when the store was deleted'),
    restorableUntil: z
      .string()
      .optional()
      .describe('Only in ?status=deleted: the last moment POST /api/stores/{id}/restore brings it back'),
  }),
);

/**
 * A lower-case DNS name of two labels or more whose last label starts with a letter (so never an IP address in
 * any spelling), not localhost or under it: what the hostname policy lets through, less what depends on the
 * deployment. The API also takes upper case, a port and a trailing dot (it normalises them), so the validator
 * stays loose and the policy answers HOSTNAME_NOT_ALLOWED (src/stores/hostname-policy.ts).
 */
const HOSTNAME_PATTERN =
  '^(?!(?:.*\\.)?localhost$)(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$';
/** A hostname as sent; what may be claimed is decided by the hostname policy (src/stores/hostname-policy.ts). */
const Hostname = z.string().min(1).max(300).openapi({
  pattern: HOSTNAME_PATTERN,
  maxLength: 253,
  description:
    "A DNS name such as shop.example.com. Also refused (400 HOSTNAME_NOT_ALLOWED) though it matches: the platform's own hostnames and their subdomains, and names under the store domain, which the platform issues.",
  example: 'shop.example.com',
});
export const HostnameBody = z.strictObject({ hostname: Hostname });
export const HostnameParams = StoreIdParams.extend({ hostname: Hostname });
export const HostnameDto = registry.register(
  'Hostname',
  z.object({
    hostname: z.string(),
    kind: z.enum(['platform', 'custom']),
    status: z.enum(['pending', 'verified']),
    verification: z.object({ type: z.literal('dns-txt'), name: z.string(), value: z.string() }).nullable(),
    verifiedAt: z.string().nullable(),
    createdAt: z.string(),
  }),
);

export const StripeKeysBody = z.strictObject({
  publishableKey: z
    .string()
    .regex(/^pk_(test|live)_[A-Za-z0-9]{8,250}$/, 'must be pk_test_ or pk_live_ followed by 8–250 letters and digits'),
  secretKey: z
    .string()
    .regex(
      /^(sk|rk)_(test|live)_[A-Za-z0-9]{8,250}$/,
      'must be sk_test_ or sk_live_ (or a restricted key, rk_test_ or rk_live_) followed by 8–250 letters and digits',
    ),
  webhookSecret: z
    .string()
    .regex(/^whsec_[A-Za-z0-9]{8,250}$/, 'must be whsec_ followed by 8–250 letters and digits')
    .optional(),
});
export const StripeIntegrationDto = z.object({
  publishableKey: z.string(),
  secretKeyLast4: z.string(),
  configuredAt: z.string(),
});

export const StoreDto = registry.register(
  'Store',
  StoreSummaryDto.extend({
    hostnames: z.array(z.string()),
    database: z
      .object({ mode: z.enum(['managed', 'external']), status: z.string(), schemaVersion: z.number().int() })
      .nullable(),
    createdAt: z.string(),
  }),
);

export type ListStoresInput = z.infer<typeof ListStoresQuery>;
export type CreateStoreInput = z.infer<typeof CreateStoreBody>;
export type StripeKeysInput = z.infer<typeof StripeKeysBody>;
