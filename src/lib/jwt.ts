import { createSecretKey, randomUUID, type KeyObject } from 'node:crypto';
import jwt, { type SignOptions } from 'jsonwebtoken';

export const JWT_ALGORITHM = 'HS256' as const;

export interface PlatformClaims {
  sub: string;
  typ: 'platform';
  role: 'user' | 'platform_admin';
  storeId: string | null;
}
export interface StoreClaims {
  sub: string;
  typ: 'store';
  role: 'admin' | 'staff' | 'customer';
  storeId: string;
}
export type TokenClaims = (PlatformClaims | StoreClaims) & { jti: string; iat: number; exp: number };

export interface JwtSettings {
  secret: string;
  expiresIn: string;
  issuer: string;
  audience: string;
}

export class InvalidTokenError extends Error {}

/** Signs and verifies our two kinds of token; the algorithm, issuer and audience are pinned. */
export class TokenSigner {
  /** A KeyObject made once: given a string, jsonwebtoken tries (and fails) to parse it as a public key on every verify. */
  private readonly key: KeyObject;

  constructor(private readonly settings: JwtSettings) {
    this.key = createSecretKey(Buffer.from(settings.secret, 'utf8'));
  }

  sign(claims: PlatformClaims | StoreClaims): { token: string; jti: string } {
    const jti = randomUUID();
    const token = jwt.sign({ ...claims }, this.key, {
      algorithm: JWT_ALGORITHM,
      expiresIn: (/^\d+$/.test(this.settings.expiresIn)
        ? Number(this.settings.expiresIn)
        : this.settings.expiresIn) as SignOptions['expiresIn'],
      issuer: this.settings.issuer,
      audience: this.settings.audience,
      jwtid: jti,
    });
    return { token, jti };
  }

  /** Verifies signature, algorithm, issuer, audience and expiry, and the shape of our claims. */
  verify(token: string): TokenClaims {
    let payload: unknown;
    try {
      payload = jwt.verify(token, this.key, {
        algorithms: [JWT_ALGORITHM],
        issuer: this.settings.issuer,
        audience: this.settings.audience,
      });
    } catch (err) {
      throw new InvalidTokenError((err as Error).message);
    }
    const p = payload as Partial<TokenClaims> & Record<string, unknown>;
    const ok =
      typeof p.sub === 'string' &&
      typeof p.jti === 'string' &&
      typeof p.exp === 'number' &&
      ((p.typ === 'platform' &&
        (p.role === 'user' || p.role === 'platform_admin') &&
        (p.storeId === null || typeof p.storeId === 'string')) ||
        (p.typ === 'store' &&
          ['admin', 'staff', 'customer'].includes(p.role as string) &&
          typeof p.storeId === 'string'));
    if (!ok) throw new InvalidTokenError('token claims are not of a known kind');
    return p as TokenClaims;
  }
}
