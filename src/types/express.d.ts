import type { TokenClaims } from '../lib/jwt';

declare global {
  namespace Express {
    interface Request {
      /** This request's id, echoed in X-Request-Id (set by the request logger). */
      id: string;
      /** Verified claims of the bearer token, set by the authenticate middleware. */
      auth?: TokenClaims;
    }
  }
}
export {};
