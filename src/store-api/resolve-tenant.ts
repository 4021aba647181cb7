import type { RequestHandler } from 'express';
import { z } from 'zod';
import type { AppContext } from '../context';
import { readToken } from '../http/authenticate';
import { runInTenant } from '../db/tenant-context';
import { AppError, ErrorCode, forbidden, notFound } from '../lib/errors';

const StoreIdHeader = z.uuid();

/** Lower-case, without port or trailing dot; Express gives the proxy's host only when trust proxy is on. */
function requestHost(hostname: string | undefined): string | undefined {
  if (!hostname) return undefined;
  return hostname.toLowerCase().replace(/\.$/, '') || undefined;
}

/**
 * Finds the store of a /api/store request — by host, else X-Store-Id, else the token's store — checks
 * they agree, and runs the rest of the request in that store's scope with its database handle.
 */
export function resolveTenant(ctx: AppContext): RequestHandler {
  const tenants = ctx.tenants;
  return async (req, res, next) => {
    const auth = readToken(ctx, req.headers.authorization);
    const host = requestHost(req.hostname);
    const tokenStore = auth?.storeId ?? null;

    let storeId: string | null = null;
    if (host) {
      const known = tenants.cachedStoreIdForHost(host);
      storeId = known !== undefined ? known : await tenants.storeIdForHost(host);
    }
    if (!storeId) {
      const header = req.headers['x-store-id'];
      if (typeof header === 'string' && header !== '') {
        const parsed = StoreIdHeader.safeParse(header);
        if (!parsed.success) throw new AppError(400, ErrorCode.VALIDATION_FAILED, 'X-Store-Id must be a store id (UUID)');
        // Postgres matches UUIDs in any case; our caches and tokens must see one spelling.
        storeId = parsed.data.toLowerCase();
      }
    }
    if (storeId && tokenStore && storeId !== tokenStore) {
      throw forbidden('The token belongs to another store than the one addressed', ErrorCode.TENANT_MISMATCH);
    }
    storeId ??= tokenStore;
    if (!storeId) throw notFound('No store matches this request', ErrorCode.STORE_NOT_FOUND);

    const handle = tenants.cachedHandle(storeId) ?? (await tenants.forStore(storeId));
    handle.leases++;
    // 'close' follows every answer, finished or cut off.
    res.once('close', () => handle.leases--);
    req.auth = auth;
    runInTenant({ storeId, handle, manager: tenants, auth }, () => next());
  };
}
