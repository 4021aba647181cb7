import { z } from 'zod';

const Host = z.string().trim().min(1).max(253).regex(/^[A-Za-z0-9.-]+$|^\[[0-9a-fA-F:]+\]$/, 'must be a host name or IP address');

export const ConnectDatabaseBody = z.union([
  z.strictObject({ mode: z.literal('managed') }),
  z.strictObject({
    mode: z.literal('external'),
    connectionString: z
      .string()
      .max(2000)
      .refine((s) => /^postgres(ql)?:\/\//.test(s), 'must be a postgres:// connection string'),
  }),
  z.strictObject({
    mode: z.literal('external'),
    host: Host,
    port: z.number().int().min(1).max(65535).default(5432),
    database: z.string().min(1).max(63),
    user: z.string().min(1).max(63),
    password: z.string().max(1000),
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
