import type { RequestHandler, Response } from 'express';
import type { AppContext } from '../context';
import { currentStoreId } from '../db/tenant-context';
import { forbidden, unauthenticated } from '../lib/errors';
import type { TokenClaims } from '../lib/jwt';
import { memberRole } from '../stores/membership';

export type StoreRole = 'admin' | 'staff' | 'customer';

/** Who acts on the store: one of its own users (store token) or a member's platform account. */
export interface StoreActor {
  kind: 'store_user' | 'platform_user';
  id: string;
  role: StoreRole;
}

async function resolveActor(ctx: AppContext, auth: TokenClaims): Promise<StoreActor | null> {
  if (auth.typ === 'store') return { kind: 'store_user', id: auth.sub, role: auth.role };
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
    if (!actor) throw forbidden('You are not a member of this store');
    if (!roles.includes(actor.role)) throw forbidden(`This needs one of these roles: ${roles.join(', ')}`);
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

export function actorOf(res: Response): StoreActor {
  const actor = res.locals.actor as StoreActor | undefined;
  if (!actor) throw unauthenticated();
  return actor;
}
