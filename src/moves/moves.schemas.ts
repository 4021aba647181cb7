import { z } from 'zod';

/** The tenant server to move to, as `host:port` (a key of TENANT_SERVERS, as GET /api/admin/tenants shows it). */
export const MoveBody = z
  .strictObject({
    server: z
      .string()
      .min(3)
      .max(300)
      .regex(/^[^\s/@]+:\d{1,5}$/, 'a tenant server as host:port'),
  })
  .meta({ id: 'StoreMoveRequest' });

export const MoveStartedDto = z.object({ jobId: z.string() }).meta({ id: 'StoreMoveStarted' });
