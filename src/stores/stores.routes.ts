import type { Request } from 'express';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformClaims, requireAuth } from '../http/authenticate';
import { redisLimiter } from '../http/rate-limit';
import { StoreIdParams } from '../http/schemas';
import { ConnectDatabaseBody, ProvisioningJobDto, ProvisioningStatusDto } from '../provisioning/provisioning.schemas';
import * as provisioning from '../provisioning/provisioning.service';
import {
  CreateStoreBody,
  HostnameBody,
  HostnameDto,
  HostnameParams,
  ListStoresQuery,
  StoreDto,
  StoreListItemDto,
  StripeIntegrationDto,
  StripeKeysBody,
  UpdateStoreBody,
} from './stores.schemas';
import * as stores from './stores.service';
import * as hostnames from './hostnames.service';
import { TxtResolver } from './hostname-verification';

/** DNS look-ups one store's hostname verifications may cause per RATE_LIMIT_WINDOW_MS. */
export const HOSTNAME_VERIFICATIONS_PER_WINDOW = 20;

const ACCESS = { 403: 'FORBIDDEN (not a member, or the role may not)', 404: 'STORE_NOT_FOUND' };
/** Routes that change the store: refused while the platform has it suspended. */
const CHANGE = { ...ACCESS, 423: 'STORE_SUSPENDED' };

/** The store registry of platform accounts (master DB), and the connection of each store's database. */
export function storesRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  const tags = ['stores'];
  const common = { tags, secured: true, middleware: [requireAuth(ctx, 'platform')] };
  const me = (req: Request) => platformClaims(req.auth).sub;

  api.post(
    '',
    {
      ...common,
      operationId: 'createStore',
      summary: 'Create a store (the caller becomes its owner)',
      body: CreateStoreBody,
      status: 201,
      response: StoreDto,
      errors: { 409: 'SLUG_TAKEN', 403: 'PLAN_LIMIT_REACHED' },
    },
    ({ body, req }) => stores.createStore(ctx, me(req), body),
  );
  api.get(
    '',
    {
      ...common,
      operationId: 'listStores',
      summary:
        "The caller's stores (the store dropdown), or with ?status=deleted the deleted ones that can still be restored",
      query: ListStoresQuery,
      response: z.object({ items: z.array(StoreListItemDto) }),
    },
    ({ query, req }) => stores.listStores(ctx, me(req), query),
  );
  api.get(
    '/:id',
    {
      ...common,
      operationId: 'getStore',
      summary: 'One store',
      params: StoreIdParams,
      response: StoreDto,
      errors: ACCESS,
    },
    ({ params, req }) => stores.getStore(ctx, me(req), params.id),
  );
  api.patch(
    '/:id',
    {
      ...common,
      operationId: 'renameStore',
      summary: 'Rename a store (an empty body changes nothing)',
      params: StoreIdParams,
      body: UpdateStoreBody,
      response: StoreDto,
      errors: CHANGE,
    },
    ({ params, body, req }) => stores.renameStore(ctx, me(req), params.id, body.name),
  );
  api.delete(
    '/:id',
    {
      ...common,
      operationId: 'deleteStore',
      summary: 'Delete a store (restorable for 30 days)',
      params: StoreIdParams,
      status: 202,
      response: z.object({ id: z.uuid(), status: z.literal('deleted'), restorableUntil: z.string() }),
      errors: CHANGE,
    },
    ({ params, req }) => stores.deleteStore(ctx, me(req), params.id),
  );
  api.post(
    '/:id/restore',
    {
      ...common,
      operationId: 'restoreStore',
      summary: 'Restore a deleted store',
      params: StoreIdParams,
      response: StoreDto,
      errors: { ...CHANGE, 409: 'CONFLICT (not deleted, or deleted too long ago)' },
    },
    ({ params, req }) => stores.restoreStore(ctx, me(req), params.id),
  );

  api.post(
    '/:id/database',
    {
      ...common,
      operationId: 'connectStoreDatabase',
      summary: "Connect and provision the store's database (managed or external)",
      params: StoreIdParams,
      body: ConnectDatabaseBody,
      status: 202,
      response: ProvisioningJobDto,
      errors: {
        ...CHANGE,
        409: 'ALREADY_PROVISIONED',
        422: 'DATABASE_UNREACHABLE | DATABASE_AUTH_FAILED | DATABASE_NOT_EMPTY',
      },
    },
    ({ params, body, req }) => provisioning.connectDatabase(ctx, me(req), params.id, body),
  );
  api.get(
    '/:id/provisioning',
    {
      ...common,
      operationId: 'getProvisioningStatus',
      summary: 'Progress of the provisioning job',
      params: StoreIdParams,
      response: ProvisioningStatusDto,
      errors: ACCESS,
    },
    ({ params, req }) => provisioning.provisioningStatus(ctx, me(req), params.id),
  );
  api.post(
    '/:id/provisioning/retry',
    {
      ...common,
      operationId: 'retryProvisioning',
      summary: 'Provision again after a failure',
      params: StoreIdParams,
      status: 202,
      response: ProvisioningJobDto,
      errors: { ...CHANGE, 409: 'CONFLICT (not failed)' },
    },
    ({ params, req }) => provisioning.retryProvisioning(ctx, me(req), params.id),
  );

  const resolver = new TxtResolver(ctx.config.hostnames.dnsServers);
  // Each verification asks DNS: bounded per store. Only answers that reached the lookup count (200, 409),
  // so a stranger's refused calls (401/403/404/423) cannot use up a store's verifications.
  const verifyLimiter = redisLimiter(ctx, 'hostname-verify', {
    limit: HOSTNAME_VERIFICATIONS_PER_WINDOW,
    keyGenerator: (req) => String(req.params.id).toLowerCase(),
    skipFailedRequests: true,
    requestWasSuccessful: (_req, res) => res.statusCode === 200 || res.statusCode === 409,
  });
  api.get(
    '/:id/hostnames',
    {
      ...common,
      operationId: 'listStoreHostnames',
      summary: "The store's hostnames",
      params: StoreIdParams,
      response: z.object({ items: z.array(HostnameDto) }),
      errors: ACCESS,
    },
    ({ params, req }) => hostnames.listHostnames(ctx, me(req), params.id),
  );
  api.post(
    '/:id/hostnames',
    {
      ...common,
      operationId: 'addStoreHostname',
      summary: 'Claim a custom hostname (pending until its DNS TXT record is verified)',
      params: StoreIdParams,
      body: HostnameBody,
      status: 201,
      response: HostnameDto,
      errors: {
        ...CHANGE,
        400: 'VALIDATION_FAILED | HOSTNAME_NOT_ALLOWED',
        403: 'FORBIDDEN | PLAN_LIMIT_REACHED',
        409: 'HOSTNAME_TAKEN',
      },
    },
    ({ params, body, req }) => hostnames.addHostname(ctx, me(req), params.id, body.hostname),
  );
  api.post(
    '/:id/hostnames/:hostname/verify',
    {
      ...common,
      operationId: 'verifyStoreHostname',
      summary: "Verify a claimed hostname: its TXT record _tenantry-challenge.<hostname> must hold the claim's value",
      params: HostnameParams,
      response: HostnameDto,
      errors: {
        ...CHANGE,
        404: 'STORE_NOT_FOUND | NOT_FOUND',
        409: 'HOSTNAME_NOT_VERIFIED | HOSTNAME_TAKEN',
        429: 'RATE_LIMITED (per store, with Retry-After)',
      },
      afterValidation: [verifyLimiter],
    },
    ({ params, req }) => hostnames.verifyHostname(ctx, resolver, me(req), params.id, params.hostname),
  );
  api.delete(
    '/:id/hostnames/:hostname',
    {
      ...common,
      operationId: 'removeStoreHostname',
      summary: 'Remove a custom hostname',
      params: HostnameParams,
      status: 204,
      errors: { ...CHANGE, 400: 'HOSTNAME_NOT_ALLOWED (the platform-issued one)', 404: 'STORE_NOT_FOUND | NOT_FOUND' },
    },
    ({ params, req }) => hostnames.removeHostname(ctx, me(req), params.id, params.hostname),
  );
  api.put(
    '/:id/integrations/stripe',
    {
      ...common,
      operationId: 'setStoreStripeKeys',
      summary: "Set the store's Stripe keys (stored encrypted, never returned)",
      params: StoreIdParams,
      body: StripeKeysBody,
      response: StripeIntegrationDto,
      errors: CHANGE,
    },
    ({ params, body, req }) => stores.putStripeKeys(ctx, me(req), params.id, body),
  );
  return api;
}
