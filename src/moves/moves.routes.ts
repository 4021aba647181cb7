import type { RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { platformAdminRouter, type ApiRouter } from '../http/api-router';
import { platformClaims } from '../http/authenticate';
import { StoreIdParams } from '../http/schemas';
import { moveMetrics } from './moves.metrics';
import { MoveBody, MoveStartedDto } from './moves.schemas';
import { requestMove } from './moves.service';

/** Moving a store's database to another tenant server (platform admins: `adminOnly` is the admin router's guard). */
export function moveRoutes(ctx: AppContext, adminOnly: RequestHandler[]): ApiRouter {
  const { api, common } = platformAdminRouter(adminOnly);
  moveMetrics(ctx);
  api.post(
    '/stores/:id/move',
    {
      ...common,
      operationId: 'moveStoreDatabase',
      summary: "Move a store's managed database to another tenant server",
      description:
        'Copies the database to the server while the store keeps serving, then switches the store to the copy: its ' +
        'requests are held (up to 2 s, else 503 TENANT_MIGRATING with Retry-After) only for the last changes and the ' +
        'switch. The old database is kept closed for STORE_MOVE_KEEP_HOURS, then dropped.',
      params: StoreIdParams,
      body: MoveBody,
      status: 202,
      response: MoveStartedDto,
      errors: {
        ...common.errors,
        400: 'VALIDATION_FAILED (not one of the tenant servers, or the store is already there)',
        404: 'STORE_NOT_FOUND',
        409: "STORE_NOT_READY (no database yet) | CONFLICT (the store is not active, its database is its owner's own, or a move or restore of it is in progress)",
      },
    },
    async ({ params, body, req }) => {
      const userId = platformClaims(req.auth).sub;
      const { jobId } = await requestMove(ctx, { userId, label: userId }, params.id, body.server);
      return { jobId };
    },
  );
  return api;
}
