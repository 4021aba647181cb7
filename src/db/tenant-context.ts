import { AsyncLocalStorage } from 'node:async_hooks';
import type { Transaction } from 'sequelize';
import type pg from 'pg';
import type { TokenClaims } from '../lib/jwt';
import type { TenantModels } from '../models/tenant';
import type { TenantHandle } from './tenant-handle';
import type { ReadMeter } from './tenant-types';

/** What runs tenant work (the ConnectionManager): a failing database fails fast, for its store alone. */
export interface TenantGuard {
  /** `work` runs on the handle it is given (after a refused password, a fresh one: not always `handle`). */
  guard<T>(handle: TenantHandle, work: (handle: TenantHandle) => Promise<T>): Promise<T>;
}

interface TenantScope {
  storeId: string;
  handle: TenantHandle;
  manager: TenantGuard;
  auth?: TokenClaims;
  /** Given a fresh one by runInTenant unless the caller brings its own. */
  read?: ReadMeter;
}

const storage = new AsyncLocalStorage<TenantScope>();

/** Run the rest of a request inside one store's scope: below this, only that store's database is reachable. */
export function runInTenant<T>(scope: TenantScope, fn: () => T): T {
  // The scope is the request's own object: every query of the request adds to this one meter.
  scope.read ??= { bytes: 0 };
  return storage.run(scope, fn);
}

/** The meter of the request running now, if any (tenant queries outside a request are metered one by one). */
export function currentReadMeter(): ReadMeter | undefined {
  return storage.getStore()?.read;
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
 * database fails fast (TENANT_UNAVAILABLE) for this store alone.
 */
export const tenantDb = {
  query<T extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<T[]> {
    const s = scope();
    return s.manager.guard(s.handle, (handle) => handle.query<T>(text, values));
  },
  transaction<T>(fn: (t: Transaction, models: TenantModels) => Promise<T>): Promise<T> {
    const s = scope();
    return s.manager.guard(s.handle, (handle) => handle.transaction((t) => fn(t, handle.models)));
  },
};
