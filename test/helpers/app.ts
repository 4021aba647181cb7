import { randomBytes } from 'node:crypto';
import type { Express } from 'express';
import request from 'supertest';
import { createApp } from '../../src/app';
import { loadConfig, type Config } from '../../src/config';
import { createContext, type AppContext } from '../../src/context';
import { startWorkers } from '../../src/worker';
import { createTestDatabase, dropManagedDatabase, type TestDatabase } from './db';

export interface TestApp {
  ctx: AppContext;
  app: Express;
  db: TestDatabase;
  close(): Promise<void>;
}

/**
 * A whole application on its own freshly migrated master database and its own Redis key prefix.
 * `env` overrides configuration keys for this suite only.
 */
export async function startTestApp(label: string, env: Record<string, string> = {}): Promise<TestApp> {
  const db = await createTestDatabase(label);
  const config: Config = loadConfig({ ...process.env, ...env });
  const ctx = await createContext({ config, masterUrl: db.url, redisPrefix: `test:${randomBytes(4).toString('hex')}` });
  const app = createApp(ctx);
  // Suites that need the queue worker ask for it with WORKER=on.
  const workers = env.WORKER === 'on' ? await startWorkers(ctx) : undefined;
  return {
    ctx,
    app,
    db,
    async close() {
      const managed = await ctx.master.models.StoreDatabase.findAll({ where: { mode: 'managed' } });
      await workers?.close();
      await ctx.close();
      await db.drop();
      // Managed databases this suite provisioned, on whichever server they went to.
      for (const d of managed) await dropManagedDatabase(d.server!, d.databaseName!);
    },
  };
}

let seq = 0;
export const uniqueEmail = (prefix = 'user') => `${prefix}-${Date.now().toString(36)}-${++seq}@example.test`;

/** Register a platform account through the API; returns its token and user. */
export async function registerUser(app: Express, overrides: Partial<{ email: string; password: string; name: string }> = {}) {
  const body = { email: uniqueEmail(), password: 'correct-horse-1', name: 'Test User', ...overrides };
  const res = await request(app).post('/api/auth/register').send(body).expect(201);
  return { token: res.body.token as string, user: res.body.user as { id: string; email: string }, password: body.password };
}
