import { randomBytes } from 'node:crypto';
import type { Express } from 'express';
import pg from 'pg';
import request from 'supertest';
import { createApp } from '../../src/app';
import { loadConfig, type Config } from '../../src/config';
import type { AppContext } from '../../src/app-context';
import { createContext } from '../../src/context';
import { startWorkers } from '../../src/worker';
import { dropManagedDatabase, type TestDatabase } from './db';
import { createMasterTestDatabase } from './master-template';
import { Resources } from './teardown';

export interface TestApp {
  ctx: AppContext;
  app: Express;
  db: TestDatabase;
  close(): Promise<void>;
}

/**
 * A whole application on its own master database (a copy of the migrated template) and its own Redis key prefix.
 * `env` overrides configuration keys for this suite only. When a step fails, what the earlier ones opened
 * is closed before the error is thrown; close() runs every step even when one fails.
 */
export async function startTestApp(label: string, env: Record<string, string> = {}): Promise<TestApp> {
  const opened = new Resources();
  try {
    const db = await createMasterTestDatabase(label);
    opened.defer(`the master database ${db.name}`, () => db.drop());
    // Managed databases this suite provisioned, on whichever server they went to (read once the app is closed).
    opened.defer('the managed tenant databases', () => dropManagedDatabases(db.url));
    const config: Config = loadConfig({ ...process.env, ...env });
    const ctx = await createContext({
      config,
      masterUrl: db.url,
      redisPrefix: `test:${randomBytes(4).toString('hex')}`,
    });
    opened.defer('the app context', () => ctx.close());
    const app = createApp(ctx);
    // Suites that need the queue worker ask for it with WORKER=on.
    if (env.WORKER === 'on') {
      const workers = await startWorkers(ctx);
      opened.defer('the queue workers', () => workers.close());
    }
    return { ctx, app, db, close: () => opened.closeAll() };
  } catch (err) {
    await opened.closeAll().catch(() => {});
    throw err;
  }
}

async function dropManagedDatabases(masterUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: masterUrl });
  await client.connect();
  let rows: { server: string; database_name: string }[];
  try {
    rows = (
      await client.query<{ server: string; database_name: string }>(
        `SELECT server, database_name FROM store_databases WHERE mode = 'managed' AND database_name IS NOT NULL`,
      )
    ).rows;
  } catch {
    rows = []; // Not migrated (the context failed to start): nothing was provisioned.
  } finally {
    await client.end();
  }
  for (const d of rows) await dropManagedDatabase(d.server, d.database_name);
}

let seq = 0;
export const uniqueEmail = (prefix = 'user') => `${prefix}-${Date.now().toString(36)}-${++seq}@example.test`;

/** Register a platform account through the API; returns its token and user. */
export async function registerUser(
  app: Express,
  overrides: Partial<{ email: string; password: string; name: string }> = {},
) {
  const body = { email: uniqueEmail(), password: 'correct-horse-1', name: 'Test User', ...overrides };
  const res = await request(app).post('/api/auth/register').send(body).expect(201);
  return {
    token: res.body.token as string,
    user: res.body.user as { id: string; email: string },
    password: body.password,
  };
}
