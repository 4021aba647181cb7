import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { RequestHandler, Router } from 'express';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { AdjustBody, CreditChangeDto } from '../credits/credits.schemas';
import { adjustCredits } from '../credits/credits.service';
import { platformAdminRouter, type ApiRouter } from '../http/api-router';
import { platformActorOf, platformClaims, requireAuth } from '../http/authenticate';
import { ListQuery } from '../http/pagination';
import { StoreIdParams } from '../http/schemas';
import { ErrorCode, fail } from '../lib/errors';
import { QueueName } from '../queue/queues';
import { adminPagesGuard, closeAdminSession, openAdminSession } from './admin-session';
import { PoolStats } from './admin.schemas';
import * as admin from './admin.service';
import { platformRoles } from './platform-admins';

/**
 * Platform admins only (the admin API, /metrics, the queue board). The role is the master DB's, read on every
 * request (cached briefly, dropped over the bus), never the token's claim: a revocation takes effect at once on
 * every instance, a grant works with a token issued before it.
 */
export function requirePlatformAdmin(ctx: AppContext): RequestHandler[] {
  const roles = platformRoles(ctx);
  return [
    requireAuth(ctx, 'platform'),
    async (req, _res, next) => {
      if (!(await roles.isPlatformAdmin(platformClaims(req.auth).sub)))
        throw fail(ErrorCode.FORBIDDEN, 'Platform administrators only');
      next();
    },
  ];
}

export function adminRoutes(ctx: AppContext): ApiRouter {
  const { api, common } = platformAdminRouter(requirePlatformAdmin(ctx));
  api.get(
    '/tenants',
    {
      ...common,
      operationId: 'listTenants',
      summary: 'Every store with its database and pool state',
      query: ListQuery,
    },
    ({ query }) => admin.listStoresWithDatabases(ctx, query),
  );
  api.get(
    '/pools',
    {
      ...common,
      operationId: 'getPoolStats',
      summary:
        "The connection manager's state (of the process that answers), with each Postgres server's budget and leases",
      response: PoolStats,
    },
    () => ctx.tenants.stats(),
  );
  api.post(
    '/stores/:id/suspend',
    {
      ...common,
      operationId: 'suspendStore',
      summary: 'Suspend a store (its routes answer 423)',
      params: StoreIdParams,
      errors: { ...common.errors, 404: 'STORE_NOT_FOUND' },
    },
    ({ params, req }) => admin.setSuspended(ctx, platformClaims(req.auth).sub, params.id, true),
  );
  api.post(
    '/stores/:id/credits/adjust',
    {
      ...common,
      operationId: 'adjustStoreCredits',
      summary: "Adjust a store's credits up or down with a reason (never below 0)",
      params: StoreIdParams,
      body: AdjustBody,
      status: 201,
      response: CreditChangeDto,
      errors: {
        ...common.errors,
        402: 'INSUFFICIENT_CREDITS (the balance would go below 0)',
        404: 'STORE_NOT_FOUND',
        409: 'CONFLICT (the idempotency key was used for a different request)',
      },
    },
    ({ params, body, req }) => adjustCredits(ctx, platformActorOf(req), params.id, body),
  );
  api.post(
    '/stores/:id/resume',
    {
      ...common,
      operationId: 'resumeStore',
      summary: 'Resume a suspended store',
      params: StoreIdParams,
      errors: { ...common.errors, 404: 'STORE_NOT_FOUND', 409: 'CONFLICT (not suspended)' },
    },
    ({ params, req }) => admin.setSuspended(ctx, platformClaims(req.auth).sub, params.id, false),
  );
  api.post(
    '/session',
    {
      ...common,
      operationId: 'createAdminSession',
      summary:
        'Open a browser session of the admin pages (/admin/queues): a 15-minute HttpOnly, SameSite=Strict cookie for /admin',
      response: z.object({ expiresAt: z.string() }),
    },
    ({ req, res }) => openAdminSession(ctx, req, res),
  );
  api.delete(
    '/session',
    {
      tags: common.tags,
      operationId: 'deleteAdminSession',
      summary: 'Close the browser session of the admin pages (clears its cookie)',
      status: 204,
    },
    ({ res }) => closeAdminSession(ctx, res),
  );
  return api;
}

/** Bull Board, for platform admins: a bearer token, or the session cookie of a browser (see admin-session.ts). */
export function queueBoard(ctx: AppContext): { path: string; guard: RequestHandler[]; router: Router } {
  const adapter = new ExpressAdapter();
  adapter.setBasePath('/admin/queues');
  createBullBoard({
    queues: Object.values(QueueName).map((name) => new BullMQAdapter(ctx.queues.get(name))),
    serverAdapter: adapter,
  });
  return { path: '/admin/queues', guard: adminPagesGuard(ctx), router: adapter.getRouter() as Router };
}
