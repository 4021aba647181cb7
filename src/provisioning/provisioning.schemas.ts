import { z } from 'zod';
import { hasControlCharacters, parseConnectionString, readHost } from './connection-string';
import { CONNECTION_STRING_PATTERN, HOST_PATTERN, NO_CONTROL_PATTERN } from './connection-string-pattern';

const Host = z
  .string()
  .refine((h) => !hasControlCharacters(h), 'must not contain control characters')
  .trim()
  .min(1)
  .max(253)
  .refine(
    (h) => readHost(h, { bareIpv6: true }) !== undefined,
    'must be a DNS name, an IPv4 address (a.b.c.d) or an IPv6 address',
  )
  .openapi({ pattern: HOST_PATTERN, maxLength: 253 });
const NoControl = z
  .string()
  .refine((s) => !hasControlCharacters(s), 'must not contain control characters')
  .openapi({ pattern: NO_CONTROL_PATTERN });

/** Owner-supplied, so data only: see connection-string.ts for what is refused and why. */
const ConnectionString = z
  .string()
  .max(2000)
  .superRefine((text, ctx) => {
    const parsed = parseConnectionString(text);
    if (!parsed.ok) ctx.addIssue({ code: 'custom', message: parsed.reason });
  })
  .openapi({
    pattern: CONNECTION_STRING_PATTERN,
    // Described in words: the tests' leak check refuses any answer that shows a database URL.
    description:
      'A URL of the scheme postgres or postgresql: scheme://user:password@host:port/database, with at most ?sslmode=disable|require|verify-full. ' +
      "Characters of user, password and database other than letters, digits and -._~!$&'()*+,;= are percent-encoded (%40 for @).",
  });

export const ConnectDatabaseBody = z.union([
  z.strictObject({ mode: z.literal('managed') }),
  z.strictObject({
    mode: z.literal('external'),
    connectionString: ConnectionString,
  }),
  z.strictObject({
    mode: z.literal('external'),
    host: Host,
    port: z.number().int().min(1).max(65535).default(5432),
    database: NoControl.min(1).max(63),
    user: NoControl.min(1).max(63),
    password: NoControl.max(1000),
    ssl: z.boolean().optional(),
  }),
]);
export type ConnectDatabaseInput = z.infer<typeof ConnectDatabaseBody>;

export const ProvisioningJobDto = z.object({ jobId: z.string(), status: z.literal('queued') });
export const ProvisioningStatusDto = z.object({
  jobId: z.string().nullable(),
  state: z.enum(['queued', 'running', 'completed', 'failed']),
  progress: z.number().int().min(0).max(100),
  step: z.string().nullable(),
  attempts: z.number().int(),
  error: z.string().nullable(),
  schemaVersion: z.number().int(),
});
export type ProvisioningStatus = z.infer<typeof ProvisioningStatusDto>;
