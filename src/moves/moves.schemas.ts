import { z } from 'zod';

/**
 * The tenant server to move to: `host:port` (as GET /api/admin/tenants shows it), or the server's entry of
 * TENANT_SERVERS as written there (a postgres:// URL, of which only host and port are read). Only a configured
 * server is ever chosen: nothing here is connected to.
 */
export const MoveBody = z
  .strictObject({
    server: z
      .string()
      .min(3)
      .max(300)
      .regex(/^(?:[^\s/@]+:\d{1,5}|postgres(?:ql)?:\/\/\S+)$/, 'a tenant server as host:port'),
  })
  .meta({ id: 'StoreMoveRequest' });

export const MoveStartedDto = z.object({ jobId: z.string() }).meta({ id: 'StoreMoveStarted' });
