import type { RequestHandler } from 'express';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { readToken } from '../http/authenticate';
import { runInTenant } from '../db/tenant-context';
import { ErrorCode, fail } from '../lib/errors';
import { routableHost } from '../stores/hostname-policy';
import { countStoreRequest } from '../usage/request-counter';

const StoreIdHeader = z.uuid();

/** The store named by X-Store-Id, if the header is sent. */
function headerStoreId(header: string | string[] | undefined): string | null {
  if (typeof header !== 'string' || header === '') return null;
  const parsed = StoreIdHeader.safeParse(header);
  if (!parsed.success) throw fail(ErrorCode.VALIDATION_FAILED, 'X-Store-Id must be a store id (UUID)');
  // Postgres matches UUIDs in any case; our caches and tokens must see one spelling.
  return parsed.data.toLowerCase();
}

/**
 * Finds the store of a /api/store request — by verified host, else X-Store-Id, else the token's store —
 * checks that whichever of them are given agree, and runs the rest of the request in that store's scope
 * with its database handle. Express gives the proxy's host only when trust proxy is on; an IP address or
 * one of the platform's own names never picks a store.
 */
export function resolveTenant(ctx: AppContext): RequestHandler {
  const tenants = ctx.tenants;
  const policy = ctx.config.hostnames;
  return async (req, res, next) => {
    const auth = readToken(ctx, req.headers.authorization);
    const host = routableHost(req.hostname, policy);
    const headerStore = headerStoreId(req.headers['x-store-id']);
    const tokenStore = auth?.storeId ?? null;

    let storeId: string | null = null;
    if (host) {
      const known = tenants.hosts.cachedStoreIdForHost(host);
      storeId = known !== undefined ? known : await tenants.hosts.storeIdForHost(host);
    }
    if (storeId && headerStore && storeId !== headerStore) {
      throw fail(ErrorCode.TENANT_MISMATCH, 'The host and X-Store-Id name different stores');
    }
    storeId ??= headerStore;
    if (storeId && tokenStore && storeId !== tokenStore) {
      throw fail(ErrorCode.TENANT_MISMATCH, 'The token belongs to another store than the one addressed');
    }
    storeId ??= tokenStore;
    if (!storeId) throw fail(ErrorCode.STORE_NOT_FOUND, 'No store matches this request');

    const handle = tenants.cachedHandle(storeId) ?? (await tenants.forStore(storeId));
    // Counted once the store answers (not for a store that is missing, suspended or not ready).
    countStoreRequest(ctx, storeId);
    handle.leases++;
    // 'close' follows every answer, finished or cut off.
    res.once('close', () => handle.leases--);
    req.auth = auth;
    runInTenant({ storeId, handle, manager: tenants, auth }, () => next());
  };
}
