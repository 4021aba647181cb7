import type { Request, RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { ErrorCode, fail, unauthenticated } from '../lib/errors';
import { InvalidTokenError, type TokenClaims } from '../lib/jwt';

/** Verify the bearer token, if any; refuse a present but bad one. Sets `req.auth`. */
export function readToken(ctx: AppContext, header: string | undefined): TokenClaims | undefined {
  if (!header) return undefined;
  const match = /^Bearer ([A-Za-z0-9._~+/=-]+)$/i.exec(header);
  if (!match) throw unauthenticated('The Authorization header must be "Bearer <token>"');
  let claims: TokenClaims;
  try {
    claims = ctx.tokens.verify(match[1]);
  } catch (err) {
    if (err instanceof InvalidTokenError) throw unauthenticated('The token is invalid or expired');
    throw err;
  }
  if (ctx.revocations.isRevoked(claims.jti)) throw unauthenticated('The token has been revoked');
  return claims;
}

/** Require a token of the given kind: platform routes refuse store tokens with WRONG_TOKEN_TYPE. */
export function requireAuth(ctx: AppContext, kind: 'platform' | 'store' | 'any'): RequestHandler {
  return (req, _res, next) => {
    // Set only by our own verifying middleware (tenant resolution reads the token first): not verified twice.
    const claims = req.auth ?? readToken(ctx, req.headers.authorization);
    if (!claims) throw unauthenticated();
    if (kind !== 'any' && claims.typ !== kind) {
      throw fail(ErrorCode.WRONG_TOKEN_TYPE, `This route needs a ${kind} token, not a ${claims.typ} token`);
    }
    req.auth = claims;
    next();
  };
}

export function platformClaims(auth: TokenClaims | undefined) {
  if (!auth || auth.typ !== 'platform') throw unauthenticated();
  return auth;
}

/** The platform user acting and the request, for a ledger or an audit row. */
export const platformActorOf = (req: Request): { userId: string; requestId: string | null } => ({
  userId: platformClaims(req.auth).sub,
  requestId: req.id === undefined ? null : String(req.id),
});
