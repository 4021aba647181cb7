import type { Request, RequestHandler, Response } from 'express';
import { rateLimit, ipKeyGenerator, type Options } from 'express-rate-limit';
import { RedisStore } from 'rate-limit-redis';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformClaims, requireAuth } from '../http/authenticate';
import { ErrorCode, fail } from '../lib/errors';
import { AuthResult, LoginBody, LoginResult, MeResult, ProfileBody, RegisterBody, SwitchStoreBody, UserDto } from './auth.schemas';
import * as auth from './auth.service';
import { z } from 'zod';

/** A limiter whose counters live in Redis, so every API instance counts together. */
export function redisLimiter(ctx: AppContext, name: string, opts: Partial<Options>) {
  return rateLimit({
    windowMs: ctx.config.rateLimit.windowMs,
    standardHeaders: 'draft-7',
    legacyHeaders: false,
    store: new RedisStore({
      prefix: `${ctx.redisPrefix}:rl:${name}:`,
      sendCommand: (command: string, ...args: string[]) => ctx.redis.call(command, ...args) as never,
    }),
    handler: (req, _res, next, options) => {
      const resetAt = (req as { rateLimit?: { resetTime?: Date } }).rateLimit?.resetTime?.getTime() ?? Date.now() + options.windowMs;
      const retryAfter = Math.max(1, Math.ceil((resetAt - Date.now()) / 1000));
      next(fail(ErrorCode.RATE_LIMITED, 'Too many attempts; try again later', { headers: { 'Retry-After': String(retryAfter) } }));
    },
    ...opts,
  });
}

/**
 * Failed sign-ins counted per address and e-mail, and per account (e-mail) whatever the address. They run
 * after validation, so the key is the normalised e-mail (" A@b.test" counts for a@b.test) and a bad body is
 * refused without being counted. `scope` prefixes both keys (the store, for store logins).
 */
export function loginLimiters(ctx: AppContext, name: string, scope: () => string = () => ''): RequestHandler[] {
  const email = (req: Request) => (req.body as { email: string }).email;
  // Only a wrong e-mail or password counts: a 429, a 503 of busy hashing or a store outage is no guess.
  const failuresOnly = { skipSuccessfulRequests: true, requestWasSuccessful: (_req: Request, res: Response) => res.statusCode !== 401 };
  return [
    redisLimiter(ctx, name, { limit: ctx.config.rateLimit.loginMax, ...failuresOnly, keyGenerator: (req) => `${scope()}${ipKeyGenerator(req.ip ?? '')}:${email(req)}` }),
    redisLimiter(ctx, `${name}-account`, { limit: ctx.config.rateLimit.accountMax, ...failuresOnly, keyGenerator: (req) => `${scope()}${email(req)}` }),
  ];
}

export function authRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/auth');
  const tags = ['auth'];
  const platform = requireAuth(ctx, 'platform');
  const loginLimits = loginLimiters(ctx, 'login');
  const registerLimiter = redisLimiter(ctx, 'register', {
    limit: ctx.config.rateLimit.registerMax,
    keyGenerator: (req) => ipKeyGenerator(req.ip ?? ''),
  });

  api.post(
    '/register',
    { operationId: 'register', summary: 'Create a platform account', tags, body: RegisterBody, status: 201, response: AuthResult, afterValidation: [registerLimiter], errors: { 409: 'EMAIL_TAKEN', 429: 'RATE_LIMITED', 503: 'SERVICE_UNAVAILABLE (with Retry-After)' } },
    ({ body, req }) => auth.register(ctx, body, req.id),
  );
  api.post(
    '/login',
    { operationId: 'login', summary: 'Sign in', tags, body: LoginBody, response: LoginResult, afterValidation: loginLimits, errors: { 401: 'INVALID_CREDENTIALS', 429: 'RATE_LIMITED', 503: 'SERVICE_UNAVAILABLE (with Retry-After)' } },
    ({ body }) => auth.login(ctx, body),
  );
  api.get('/me', { operationId: 'getMe', summary: 'The signed-in account and its stores', tags, secured: true, middleware: [platform], response: MeResult, errors: { 403: WRONG_TOKEN, 404: 'NOT_FOUND (the account no longer exists)' } }, ({ req }) =>
    auth.me(ctx, platformClaims(req.auth)),
  );
  api.post('/logout', { operationId: 'logout', summary: 'Revoke this token everywhere', tags, secured: true, middleware: [platform], status: 204, errors: { 403: WRONG_TOKEN } }, async ({ req }) => {
    await auth.logout(ctx, platformClaims(req.auth));
  });
  api.patch(
    '/profile',
    { operationId: 'updateProfile', summary: 'Update the profile (only the fields sent; null clears one)', tags, secured: true, middleware: [platform], body: ProfileBody, response: z.object({ user: UserDto }), errors: { 403: WRONG_TOKEN, 404: 'NOT_FOUND (the account no longer exists)' } },
    ({ body, req }) => auth.updateProfile(ctx, platformClaims(req.auth).sub, body),
  );
  api.post(
    '/switch-store',
    { operationId: 'switchStore', summary: 'A token acting on another of your stores', tags, secured: true, middleware: [platform], body: SwitchStoreBody, response: z.object({ token: z.string() }), errors: { 403: `FORBIDDEN (not a member of that store) | ${WRONG_TOKEN}`, 404: 'NOT_FOUND (the account no longer exists)' } },
    ({ body, req }) => auth.switchStore(ctx, platformClaims(req.auth).sub, body.storeId),
  );
  return api;
}
