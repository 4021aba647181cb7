import { randomBytes } from 'node:crypto';
import type { Express } from 'express';
import pg from 'pg';
import request from 'supertest';
import type { TenantConnection } from '../../src/db/tenant-handle';
import { secretContext } from '../../src/lib/crypto';
import type { TestApp } from './app';
import { eventually } from './fixtures';

/** The Authorization header of a bearer token. */
export const auth = (token: string) => ({ Authorization: `Bearer ${token}` });

export const uniqueSlug = (prefix = 'shop') => `${prefix}-${randomBytes(5).toString('hex')}`;

/** POST /api/stores as this user; returns the created Store. */
export async function createStoreViaApi(
  app: Express,
  token: string,
  overrides: Partial<{ name: string; slug: string }> = {},
) {
  const res = await request(app)
    .post('/api/stores')
    .set(auth(token))
    .send({ name: 'Test Shop', slug: uniqueSlug(), ...overrides });
  if (res.status !== 201) throw new Error(`creating a store answered ${res.status} ${res.text}`);
  return res.body as {
    id: string;
    name: string;
    slug: string;
    status: string;
    role: string;
    hostnames: string[];
    database: unknown;
    createdAt: string;
  };
}

/** Poll GET /api/stores/:id/provisioning until the job reaches `state` (completed by default). */
export async function waitForProvisioning(
  app: Express,
  token: string,
  storeId: string,
  state: 'completed' | 'failed' = 'completed',
  timeoutMs = 20000,
) {
  return eventually(async () => {
    const res = await request(app).get(`/api/stores/${storeId}/provisioning`).set(auth(token));
    if (res.status !== 200 || res.body.state !== state)
      throw new Error(`provisioning of ${storeId}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as {
      jobId: string;
      state: string;
      progress: number;
      step: string | null;
      attempts: number;
      error: string | null;
      schemaVersion: number;
    };
  }, timeoutMs);
}

/** Create a store through the API, connect a managed database and wait until the store is active. */
export async function provisionManagedStore(
  app: Express,
  token: string,
  overrides: Partial<{ name: string; slug: string }> = {},
) {
  const store = await createStoreViaApi(app, token, overrides);
  await request(app).post(`/api/stores/${store.id}/database`).set(auth(token)).send({ mode: 'managed' }).expect(202);
  await waitForProvisioning(app, token, store.id);
  return store;
}

/** The decrypted connection settings the master DB keeps for a store's database. */
export async function storeConnection(t: TestApp, storeId: string): Promise<TenantConnection> {
  const row = await t.ctx.master.models.StoreDatabase.findByPk(storeId, { rejectOnEmpty: true });
  return t.ctx.encryptor.decryptJson<TenantConnection>(row.credentials, secretContext.storeCredentials(storeId));
}

/** Run one statement on a database with these settings (a fresh connection, closed afterwards). */
export async function queryWith<R extends pg.QueryResultRow = Record<string, unknown>>(
  connection: pg.ClientConfig,
  sql: string,
  values: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionTimeoutMillis: 5000, ...connection });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql, values)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}
