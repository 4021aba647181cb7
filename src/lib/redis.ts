import { Redis } from 'ioredis';

/** A Redis connection as BullMQ needs it (no per-command retry limit, so blocking commands are safe). */
export function createRedis(url: string, name: string): Redis {
  return new Redis(url, { maxRetriesPerRequest: null, connectionName: `tenantry-${name}`, lazyConnect: true });
}

/** Connect, or explain how to get a Redis when none answers. */
export async function connectRedis(redis: Redis, url: string, timeoutMs = 3000): Promise<void> {
  const timer = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timed out')), timeoutMs).unref());
  try {
    await Promise.race([redis.connect(), timer]);
    await redis.ping();
  } catch (err) {
    redis.disconnect();
    throw new Error(
      `Redis does not answer at ${url} (${(err as Error).message}). Start one (e.g. \`redis-server --daemonize yes\`, ` +
        'or `docker run -d -p 6379:6379 redis:7`) or point REDIS_URL at yours.',
    );
  }
}
