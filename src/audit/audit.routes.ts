import type { RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { ApiRouter, NOT_PLATFORM_ADMIN, WRONG_TOKEN } from '../http/api-router';
import { platformActorOf, requireAuth } from '../http/authenticate';
import { StoreIdParams } from '../http/schemas';
import { AdminAuditQuery, AuditPageDto, StoreAuditQuery } from './audit.schemas';
import * as auditTrail from './audit.service';

const FILTERS_400 = 'VALIDATION_FAILED (a bad filter, `from` after `to`, or a cursor this API did not give out)';

/**
 * The audit trail: a store's (its owner and admins; platform tokens only) and the platform's (platform admins:
 * `adminOnly` is the admin router's guard). Decisions beyond API.md: filters `action` (one action, or a family
 * as `credits.*`), `from` and `to` (a half-open time range); the admin list also filters by `storeId` and
 * `actorId`. Entries of a deleted store stay readable by its owner while it can be restored.
 */
export function auditRoutes(ctx: AppContext, adminOnly: RequestHandler[]): ApiRouter[] {
  const tags = ['audit'];

  const stores = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  stores.get(
    '/:id/audit',
    {
      tags,
      secured: true,
      middleware: [requireAuth(ctx, 'platform')],
      operationId: 'listStoreAudit',
      summary: "The store's audit trail, newest first (owner, admin)",
      params: StoreIdParams,
      query: StoreAuditQuery,
      response: AuditPageDto,
      errors: {
        400: FILTERS_400,
        403: 'FORBIDDEN (not a member, or the role may not)',
        404: 'STORE_NOT_FOUND',
      },
    },
    ({ params, query, req }) => auditTrail.storeAuditTrail(ctx, platformActorOf(req).userId, params.id, query),
  );

  const admin = new ApiRouter('/api/admin', { securedErrors: { 403: WRONG_TOKEN } });
  admin.get(
    '/audit',
    {
      tags: ['platform admin', ...tags],
      secured: true,
      middleware: adminOnly,
      operationId: 'listPlatformAudit',
      summary: 'The whole audit trail, every store and the platform, newest first (platform admins)',
      query: AdminAuditQuery,
      response: AuditPageDto,
      errors: { 400: FILTERS_400, 403: NOT_PLATFORM_ADMIN },
    },
    ({ query }) => auditTrail.platformAuditTrail(ctx, query),
  );

  return [stores, admin];
}
