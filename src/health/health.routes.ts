import { z } from 'zod';
import type { AppContext } from '../app-context';
import { ApiRouter } from '../http/api-router';

const withTimeout = <T>(p: Promise<T>, ms: number) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timed out')), ms).unref())]);

async function check(probe: () => Promise<unknown>): Promise<'ok' | 'failed'> {
  try {
    await withTimeout(probe(), 1500);
    return 'ok';
  } catch {
    return 'failed';
  }
}

const Readiness = z.object({
  status: z.enum(['ok', 'unavailable']),
  checks: z.object({ master: z.enum(['ok', 'failed']), redis: z.enum(['ok', 'failed']) }),
});

export function healthRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('');
  const tags = ['health'];
  api.get(
    '/health',
    { operationId: 'getHealth', summary: 'The process is up', tags, response: z.object({ status: z.literal('ok') }) },
    () => ({ status: 'ok' }),
  );
  api.get(
    '/ready',
    {
      operationId: 'getReadiness',
      summary: 'The master DB and Redis answer',
      tags,
      response: Readiness,
      otherResponses: {
        503: { description: 'Not ready: `checks` says which of the master DB and Redis failed', schema: Readiness },
      },
    },
    async ({ res }) => {
      const [master, redis] = await Promise.all([
        check(() => ctx.master.sequelize.query('SELECT 1')),
        check(() => ctx.redis.ping()),
      ]);
      const ready = master === 'ok' && redis === 'ok';
      res.status(ready ? 200 : 503).json({ status: ready ? 'ok' : 'unavailable', checks: { master, redis } });
    },
  );
  return api;
}
