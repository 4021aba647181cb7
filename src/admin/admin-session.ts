import { hkdfSync, randomUUID, type KeyObject, createSecretKey } from 'node:crypto';
import { Router, type Request, type RequestHandler, type Response } from 'express';
import jwt from 'jsonwebtoken';
import type { AppContext } from '../app-context';
import { platformClaims, requireAuth } from '../http/authenticate';
import { ErrorCode, fail, unauthenticated } from '../lib/errors';
import { JWT_ALGORITHM, type JwtSettings, type TokenClaims } from '../lib/jwt';
import { platformRoles } from './platform-admins';

/**
 * A browser's way into the admin pages (the queue board): a platform admin trades a bearer token for a short
 * cookie scoped to /admin. The cookie holds a JWT of its own kind — its own key, audience and `typ` — so it is
 * never an API token and an API token is never a session. Its holder's role is still read from the master DB on
 * every request, and the session ends with the platform token it came from (logout revokes that token).
 */

export const ADMIN_SESSION_COOKIE = 'tenantry_admin_session';
export const ADMIN_SESSION_TYP = 'admin_session';
/** Lifetime of a session (seconds); never beyond the platform token it was opened with. */
export const ADMIN_SESSION_TTL_S = 15 * 60;
const COOKIE_PATH = '/admin';
/** Methods that change nothing: the only ones a cookie opens without an Origin check. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface AdminSessionClaims {
  sub: string;
  typ: typeof ADMIN_SESSION_TYP;
  /** jti of the platform token the session was opened with. */
  sid: string;
  jti: string;
  exp: number;
}

/** The session token's key: derived from JWT_SECRET for this one purpose, so no API token can verify with it. */
export function adminSessionKey(secret: string): KeyObject {
  return createSecretKey(Buffer.from(hkdfSync('sha256', secret, 'tenantry', 'admin session token', 32)));
}

export const adminSessionAudience = (settings: JwtSettings) => `${settings.audience}:${ADMIN_SESSION_TYP}`;

class AdminSessions {
  private readonly key: KeyObject;

  constructor(
    private readonly ctx: AppContext,
    private readonly settings = ctx.config.jwt,
  ) {
    this.key = adminSessionKey(settings.secret);
  }

  issue(platform: TokenClaims): { token: string; exp: number } {
    const exp = Math.min(Math.floor(Date.now() / 1000) + ADMIN_SESSION_TTL_S, platform.exp);
    const token = jwt.sign({ typ: ADMIN_SESSION_TYP, sid: platform.jti, exp }, this.key, {
      algorithm: JWT_ALGORITHM,
      issuer: this.settings.issuer,
      audience: adminSessionAudience(this.settings),
      subject: platform.sub,
      jwtid: randomUUID(),
    });
    return { token, exp };
  }

  /** The session of a Cookie header: undefined without our cookie, 401 when none of ours verifies. */
  fromCookies(header: string | undefined): AdminSessionClaims | undefined {
    const values = cookieValues(header, ADMIN_SESSION_COOKIE);
    if (!values.length) return undefined;
    for (const value of values) {
      const claims = this.verify(value);
      if (claims) return claims;
    }
    throw unauthenticated('The admin session is invalid or expired; sign in again at /admin/login');
  }

  private verify(token: string): AdminSessionClaims | undefined {
    let p: Partial<AdminSessionClaims> & Record<string, unknown>;
    try {
      p = jwt.verify(token, this.key, {
        algorithms: [JWT_ALGORITHM],
        issuer: this.settings.issuer,
        audience: adminSessionAudience(this.settings),
      }) as typeof p;
    } catch {
      return undefined;
    }
    const ok =
      p.typ === ADMIN_SESSION_TYP &&
      typeof p.sub === 'string' &&
      typeof p.sid === 'string' &&
      typeof p.jti === 'string' &&
      typeof p.exp === 'number';
    if (!ok || this.ctx.revocations.isRevoked(p.sid!) || this.ctx.revocations.isRevoked(p.jti!)) return undefined;
    return p as AdminSessionClaims;
  }
}

/** Every value of the cookie `name` in a Cookie header (a browser may send one per matching path). */
function cookieValues(header: string | undefined, name: string): string[] {
  if (!header) return [];
  const values: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name)
      values.push(
        part
          .slice(eq + 1)
          .trim()
          .replace(/^"(.*)"$/, '$1'),
      );
  }
  return values;
}

const perContext = new WeakMap<AppContext, AdminSessions>();
function sessions(ctx: AppContext): AdminSessions {
  let s = perContext.get(ctx);
  if (!s) perContext.set(ctx, (s = new AdminSessions(ctx)));
  return s;
}

function cookieOptions(ctx: AppContext) {
  return { httpOnly: true, secure: ctx.config.isProduction, sameSite: 'strict' as const, path: COOKIE_PATH };
}

/** POST /api/admin/session (a platform admin's bearer token, checked by the route): sets the session cookie. */
export function openAdminSession(ctx: AppContext, req: Request, res: Response): { expiresAt: string } {
  const { token, exp } = sessions(ctx).issue(platformClaims(req.auth));
  res.cookie(ADMIN_SESSION_COOKIE, token, { ...cookieOptions(ctx), maxAge: Math.max(0, exp * 1000 - Date.now()) });
  return { expiresAt: new Date(exp * 1000).toISOString() };
}

/** DELETE /api/admin/session: the browser forgets the cookie (its token also ends with its platform token). */
export function closeAdminSession(ctx: AppContext, res: Response): void {
  res.clearCookie(ADMIN_SESSION_COOKIE, cookieOptions(ctx));
}

/** Whether a request comes from a page of this very site (its Origin, else its Referer, names our origin). */
function fromOwnPages(req: Request): boolean {
  let origin = req.headers.origin;
  if (origin === undefined && req.headers.referer) {
    try {
      origin = new URL(req.headers.referer).origin;
    } catch {
      return false;
    }
  }
  // req.protocol and req.host follow X-Forwarded-* only when TRUST_PROXY says so.
  return origin !== undefined && origin.toLowerCase() === `${req.protocol}://${req.host}`.toLowerCase();
}

/**
 * The guard of the admin pages: a platform admin's bearer token, or the session cookie. A request that changes
 * state with the cookie must also come from our own pages (Origin, else Referer): SameSite=Strict already keeps
 * the cookie off other sites' requests, this holds where SameSite is not enforced. The role is the master DB's,
 * read on every request, as for the admin API.
 */
export function adminPagesGuard(ctx: AppContext): RequestHandler[] {
  const roles = platformRoles(ctx);
  const bearer = requireAuth(ctx, 'platform');
  const adminUser = new WeakMap<Request, string>();
  return [
    (req, res, next) => {
      if (req.headers.authorization !== undefined) {
        bearer(req, res, (err?: unknown) => {
          if (err === undefined) adminUser.set(req, platformClaims(req.auth).sub);
          next(err);
        });
        return;
      }
      const session = sessions(ctx).fromCookies(req.headers.cookie);
      if (!session) throw unauthenticated('Sign in at /admin/login, or send a platform admin token');
      if (!SAFE_METHODS.has(req.method) && !fromOwnPages(req)) {
        throw fail(
          ErrorCode.FORBIDDEN,
          'A change made with the admin session cookie must come from the admin pages of this site (Origin)',
        );
      }
      adminUser.set(req, session.sub);
      next();
    },
    async (req, _res, next) => {
      if (!(await roles.isPlatformAdmin(adminUser.get(req)!)))
        throw fail(ErrorCode.FORBIDDEN, 'Platform administrators only');
      next();
    },
  ];
}

const LOGIN_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Tenantry admin — sign in</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; background: #f4f5f7; color: #1d2330; margin: 0; }
main { max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 4px #0002; }
h1 { font-size: 1.25rem; margin: 0 0 1.5rem; }
label { display: block; margin-bottom: 1rem; }
input { display: block; width: 100%; box-sizing: border-box; padding: .5rem; margin-top: .25rem; font: inherit; }
button { font: inherit; padding: .5rem 1rem; cursor: pointer; }
#message { min-height: 1.5em; color: #a11; }
#sign-out { margin-top: 1.5rem; }
</style>
<script src="/admin/login.js" defer></script>
</head>
<body>
<main>
<h1>Tenantry platform admin</h1>
<form id="sign-in" method="post">
<label>E-mail <input name="email" type="email" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
<p id="message" role="alert"></p>
<form id="sign-out" method="post"><button type="submit">Sign out</button> · <a href="/admin/queues">Queues</a></form>
</main>
</body>
</html>
`;

/** The sign-in page's script: a file of its own, since the Content-Security-Policy refuses inline scripts. */
const LOGIN_SCRIPT = `'use strict';
const message = document.getElementById('message');

async function call(method, url, options = {}) {
  const headers = {};
  if (options.body) headers['Content-Type'] = 'application/json';
  if (options.token) headers.Authorization = 'Bearer ' + options.token;
  const res = await fetch(url, { method, headers, body: options.body && JSON.stringify(options.body), credentials: 'same-origin' });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error((data && data.detail) || res.status + ' ' + res.statusText);
  return data;
}

document.getElementById('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const fields = new FormData(event.target);
  message.textContent = 'Signing in…';
  try {
    const login = await call('POST', '/api/auth/login', { body: { email: fields.get('email'), password: fields.get('password') } });
    await call('POST', '/api/admin/session', { token: login.token });
    location.assign('/admin/queues');
  } catch (err) {
    message.textContent = err.message;
  }
});

document.getElementById('sign-out').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await call('DELETE', '/api/admin/session');
    message.textContent = 'Signed out.';
  } catch (err) {
    message.textContent = err.message;
  }
});
`;

/** GET /admin/login (a sign-in form for platform admins) and its script. */
export function adminLoginPage(): Router {
  const router = Router();
  router.get('/admin/login', (_req, res) => {
    res.set('Cache-Control', 'no-store').type('html').send(LOGIN_PAGE);
  });
  router.get('/admin/login.js', (_req, res) => {
    res.set('Cache-Control', 'no-cache').type('js').send(LOGIN_SCRIPT);
  });
  return router;
}
