import type { RequestHandler, Response } from 'express';
import { LRUCache } from 'lru-cache';
import type { AppContext } from '../app-context';
import { currentStoreId, tenantDb } from '../db/tenant-context';
import { ErrorCode, fail, unauthenticated } from '../lib/errors';
import type { TokenClaims } from '../lib/jwt';
import { memberRole } from '../stores/membership';

export type StoreRole = 'admin' | 'staff' | 'customer';

/** Who acts on the store: one of its own users (store token) or a member's platform account. */
export interface StoreActor {
  kind: 'store_user' | 'platform_user';
  id: string;
  role: StoreRole;
}

/**
 * Store users' current roles as this instance last read them from their store's database. A token carries
 * the role it was issued with; API.md promises that a role change or removal reaches issued tokens within
 * 60 s, so an entry is trusted for at most `ttlMs` (a suite may shorten it).
 */
export class StoreRoleCache {
  ttlMs = 30_000;
  private readonly entries = new LRUCache<string, { role: StoreRole | null }>({ max: 50_000 });

  async roleOf(storeId: string, userId: string, load: () => Promise<StoreRole | null>): Promise<StoreRole | null> {
    const key = `${storeId}:${userId}`;
    const hit = this.entries.get(key);
    if (hit) return hit.role;
    const role = await load();
    this.entries.set(key, { role }, { ttl: this.ttlMs });
    return role;
  }

  clear(): void {
    this.entries.clear();
  }
}
export const storeUserRoles = new StoreRoleCache();

async function currentRole(userId: string): Promise<StoreRole | null> {
  const rows = await tenantDb.query<{ role: StoreRole }>('SELECT role FROM users WHERE id = $1', [userId]);
  return rows[0]?.role ?? null;
}

/** A store token whose user has been removed is refused (401) like a revoked one. */
async function resolveActor(ctx: AppContext, auth: TokenClaims): Promise<StoreActor | null> {
  if (auth.typ === 'store') {
    const role = await storeUserRoles.roleOf(currentStoreId(), auth.sub, () => currentRole(auth.sub));
    if (!role) throw unauthenticated('The account no longer exists');
    return { kind: 'store_user', id: auth.sub, role };
  }
  const member = await memberRole(ctx.master, auth.sub, currentStoreId());
  return member ? { kind: 'platform_user', id: auth.sub, role: member === 'staff' ? 'staff' : 'admin' } : null;
}

/**
 * Allow store users with one of `roles`; a platform token counts when its user is a member of the store
 * (owner and admin act as `admin`, staff as `staff`).
 */
export function requireStoreRole(ctx: AppContext, roles: StoreRole[]): RequestHandler {
  return async (req, res, next) => {
    if (!req.auth) throw unauthenticated();
    const actor = await resolveActor(ctx, req.auth);
    if (!actor) throw fail(ErrorCode.FORBIDDEN, 'You are not a member of this store');
    if (!roles.includes(actor.role))
      throw fail(ErrorCode.FORBIDDEN, `This needs one of these roles: ${roles.join(', ')}`);
    res.locals.actor = actor;
    next();
  };
}

/** Public routes that show more to staff: note who calls when a token was sent, refuse nobody. */
export function identifyActor(ctx: AppContext): RequestHandler {
  return (req, res, next) => {
    if (!req.auth) return next();
    return resolveActor(ctx, req.auth).then((actor) => {
      res.locals.actor = actor ?? undefined;
      next();
    });
  };
}

export function storeActorOf(res: Response): StoreActor {
  const actor = res.locals.actor as StoreActor | undefined;
  if (!actor) throw unauthenticated();
  return actor;
}
