import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformActorOf, requireAuth } from '../http/authenticate';
import { StoreIdParams } from '../http/schemas';
import { UsageDto, UsageQuery } from './usage.schemas';
import * as usage from './usage.service';

/**
 * A store's usage (owner, admin; platform tokens only). Decisions beyond API.md: the range is of UTC days,
 * both ends included, at most 366 days, by default the last 30 up to today; requests are the store API's
 * (`/api/store/...`) once the store was resolved, counted in Redis and flushed into the master DB by the
 * worker every minute (today's count is read live). The database size is the periodic sample when there is
 * one, else read from the store's database.
 */
export function usageRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  api.get(
    '/:id/usage',
    {
      tags: ['usage'],
      secured: true,
      middleware: [requireAuth(ctx, 'platform')],
      operationId: 'getStoreUsage',
      summary: 'Credits spent, requests made, database size and counts against the plan (owner, admin)',
      params: StoreIdParams,
      query: UsageQuery,
      response: UsageDto,
      errors: {
        400: 'VALIDATION_FAILED (not a date, `from` after `to`, or more than 366 days)',
        403: 'FORBIDDEN (not a member, or the role may not)',
        404: 'STORE_NOT_FOUND',
      },
    },
    ({ params, query, req }) => usage.storeUsage(ctx, platformActorOf(req).userId, params.id, query),
  );
  return api;
}
