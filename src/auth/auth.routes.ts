import { ipKeyGenerator } from 'express-rate-limit';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformClaims, requireAuth } from '../http/authenticate';
import { loginLimiters, redisLimiter } from '../http/rate-limit';
import {
  AuthResult,
  LoginBody,
  LoginResult,
  MeResult,
  ProfileBody,
  RegisterBody,
  SwitchStoreBody,
  UserDto,
} from './auth.schemas';
import * as auth from './auth.service';
import { z } from 'zod';

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
    {
      operationId: 'register',
      summary: 'Create a platform account',
      tags,
      body: RegisterBody,
      status: 201,
      response: AuthResult,
      afterValidation: [registerLimiter],
      errors: { 409: 'EMAIL_TAKEN', 429: 'RATE_LIMITED', 503: 'SERVICE_UNAVAILABLE (with Retry-After)' },
    },
    ({ body, req }) => auth.register(ctx, body, req.id),
  );
  api.post(
    '/login',
    {
      operationId: 'login',
      summary: 'Sign in',
      tags,
      body: LoginBody,
      response: LoginResult,
      afterValidation: loginLimits,
      errors: { 401: 'INVALID_CREDENTIALS', 429: 'RATE_LIMITED', 503: 'SERVICE_UNAVAILABLE (with Retry-After)' },
    },
    ({ body, req }) => auth.login(ctx, body, req.id),
  );
  api.get(
    '/me',
    {
      operationId: 'getMe',
      summary: 'The signed-in account and its stores',
      tags,
      secured: true,
      middleware: [platform],
      response: MeResult,
      errors: { 403: WRONG_TOKEN, 404: 'NOT_FOUND (the account no longer exists)' },
    },
    ({ req }) => auth.me(ctx, platformClaims(req.auth)),
  );
  api.post(
    '/logout',
    {
      operationId: 'logout',
      summary: 'Revoke this token everywhere',
      tags,
      secured: true,
      middleware: [platform],
      status: 204,
      errors: { 403: WRONG_TOKEN },
    },
    async ({ req }) => {
      await auth.logout(ctx, platformClaims(req.auth), req.id);
    },
  );
  api.patch(
    '/profile',
    {
      operationId: 'updateProfile',
      summary: 'Update the profile (only the fields sent; null clears one)',
      tags,
      secured: true,
      middleware: [platform],
      body: ProfileBody,
      response: z.object({ user: UserDto }),
      errors: { 403: WRONG_TOKEN, 404: 'NOT_FOUND (the account no longer exists)' },
    },
    ({ body, req }) => auth.updateProfile(ctx, platformClaims(req.auth).sub, body),
  );
  api.post(
    '/switch-store',
    {
      operationId: 'switchStore',
      summary: 'A token acting on another of your stores',
      tags,
      secured: true,
      middleware: [platform],
      body: SwitchStoreBody,
      response: z.object({ token: z.string() }),
      errors: {
        403: `FORBIDDEN (not a member of that store) | ${WRONG_TOKEN}`,
        404: 'NOT_FOUND (the account no longer exists)',
      },
    },
    ({ body, req }) => auth.switchStore(ctx, platformClaims(req.auth).sub, body.storeId),
  );
  return api;
}
