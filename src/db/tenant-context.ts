import { AsyncLocalStorage } from 'node:async_hooks';
import type { Transaction } from 'sequelize';
import type pg from 'pg';
import type { TokenClaims } from '../lib/jwt';
import type { TenantModels } from '../models/tenant';
import type { ConnectionManager } from './connection-manager';
import type { TenantHandle } from './tenant-handle';

interface TenantScope {
  storeId: string;
  handle: TenantHandle;
  manager: ConnectionManager;
  auth?: TokenClaims;
}

const storage = new AsyncLocalStorage<TenantScope>();

/** Run the rest of a request inside one store's scope: below this, only that store's database is reachable. */
export function runInTenant<T>(scope: TenantScope, fn: () => T): T {
  return storage.run(scope, fn);
}

function scope(): TenantScope {
  const s = storage.getStore();
  if (!s) throw new Error('no tenant in scope: tenant work must run below the tenant resolution middleware');
  return s;
}

/** The store the current request was resolved to. */
export function currentStoreId(): string {
  return scope().storeId;
}

/**
 * The current store's database. Every call goes through the ConnectionManager's guard, so a failing
 * database becomes a fast 503 for this store alone.
 */
export const tenantDb = {
  query<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]> {
    const s = scope();
    return s.manager.guard(s.handle, () => s.handle.query<T>(text, values));
  },
  transaction<T>(fn: (t: Transaction, models: TenantModels) => Promise<T>): Promise<T> {
    const s = scope();
    return s.manager.guard(s.handle, () => s.handle.transaction((t) => fn(t, s.handle.models)));
  },
};
