import { randomBytes } from 'node:crypto';
import type { Express } from 'express';
import { QueryTypes } from 'sequelize';
import { createApp } from '../../src/app';
import { loadConfig } from '../../src/config';
import type { AppContext } from '../../src/app-context';
import { createContext } from '../../src/context';
import type { MemberRole, StoreStatus } from '../../src/models/master';
import type { TestApp } from './app';

/**
 * A store row and its membership written straight into the master DB (for suites that need a store
 * without going through the stores API).
 */
export async function insertStore(
  t: TestApp,
  userId: string,
  options: { role?: MemberRole; status?: StoreStatus; name?: string; ownerId?: string } = {},
) {
  const { Store, StoreMember } = t.ctx.master.models;
  const slug = `store-${randomBytes(5).toString('hex')}`;
  const status = options.status ?? 'active';
  const store = await Store.create({
    name: options.name ?? `Store ${slug}`,
    slug,
    ownerId: options.ownerId ?? userId,
    status,
    deletedAt: status === 'deleted' ? new Date() : null,
  });
  await StoreMember.create({ storeId: store.id, userId, role: options.role ?? 'owner' });
  return store;
}

/** Another API instance on the same master DB and Redis, as a load balancer would run beside the first. */
export async function startInstance(
  t: TestApp,
  env?: Record<string, string>,
  opts: { redisPrefix?: string } = {},
): Promise<{ ctx: AppContext; app: Express }> {
  const config = env ? loadConfig({ ...process.env, ...env }) : t.ctx.config;
  // Instances of one deployment share the master DB and the Redis prefix (queues, pub/sub, rate limits).
  const ctx = await createContext({ config, masterUrl: t.db.url, redisPrefix: opts.redisPrefix ?? t.ctx.redisPrefix });
  return { ctx, app: createApp(ctx) };
}

export async function countRows(
  t: TestApp,
  table: string,
  where = 'true',
  replacements: Record<string, unknown> = {},
): Promise<number> {
  const rows = await t.ctx.master.sequelize.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${table} WHERE ${where}`,
    {
      replacements,
      type: QueryTypes.SELECT,
    },
  );
  return rows[0].n;
}

/** Poll until the check passes (for effects that travel over Redis pub/sub), failing after timeoutMs. */
export async function eventually<T>(check: () => Promise<T>, timeoutMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
