import type { Request, RequestHandler, Response } from 'express';
import { rateLimit, ipKeyGenerator, type Options } from 'express-rate-limit';
import { RedisStore } from 'rate-limit-redis';
import type { AppContext } from '../app-context';
import { ErrorCode, fail } from '../lib/errors';

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
      const resetAt =
        (req as { rateLimit?: { resetTime?: Date } }).rateLimit?.resetTime?.getTime() ?? Date.now() + options.windowMs;
      const retryAfter = Math.max(1, Math.ceil((resetAt - Date.now()) / 1000));
      next(
        fail(ErrorCode.RATE_LIMITED, 'Too many attempts; try again later', {
          headers: { 'Retry-After': String(retryAfter) },
        }),
      );
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
  const failuresOnly = {
    skipSuccessfulRequests: true,
    requestWasSuccessful: (_req: Request, res: Response) => res.statusCode !== 401,
  };
  return [
    redisLimiter(ctx, name, {
      limit: ctx.config.rateLimit.loginMax,
      ...failuresOnly,
      keyGenerator: (req) => `${scope()}${ipKeyGenerator(req.ip ?? '')}:${email(req)}`,
    }),
    redisLimiter(ctx, `${name}-account`, {
      limit: ctx.config.rateLimit.accountMax,
      ...failuresOnly,
      keyGenerator: (req) => `${scope()}${email(req)}`,
    }),
  ];
}
