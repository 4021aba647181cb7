import { ipKeyGenerator } from 'express-rate-limit';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { currentStoreId } from '../db/tenant-context';
import { ApiRouter, type RouterDocs } from '../http/api-router';
import { requireAuth } from '../http/authenticate';
import { ListQuery, pageOf } from '../http/pagination';
import { loginLimiters, redisLimiter } from '../http/rate-limit';
import { ErrorCode, unauthenticated } from '../lib/errors';
import { limitsOfStore, refuseWritesOverStorage } from '../subscriptions/store-limits';
import { CreateOrderBody, OrderDto, OrderIdParams } from './orders.schemas';
import * as orders from './orders.service';
import {
  CreateProductBody,
  ProductDto,
  ProductIdParams,
  ProductListQuery,
  UpdateProductBody,
} from './products.schemas';
import * as products from './products.service';
import { resolveTenant } from './resolve-tenant';
import { storeActorOf, identifyActor, requireStoreRole, type StoreActor } from './store-access';
import {
  CreateStaffBody,
  CustomerDto,
  StoreAuthResult,
  StoreInfoDto,
  StoreLoginBody,
  StoreRegisterBody,
  StoreUserDto,
} from './store-users.schemas';
import * as users from './store-users.service';

const TENANT_ERRORS = {
  403: `${ErrorCode.TENANT_MISMATCH} | ${ErrorCode.FORBIDDEN}`,
  404: ErrorCode.STORE_NOT_FOUND,
  409: ErrorCode.STORE_NOT_READY,
  423: ErrorCode.STORE_SUSPENDED,
  503: `${ErrorCode.TENANT_UNAVAILABLE} | ${ErrorCode.TENANT_MIGRATING} (with Retry-After)`,
};
/** Creations a plan limits; every write (POST, PUT, PATCH, DELETE) of a store over its storage limit is refused. */
const PLAN_LIMITS = {
  products: `${ErrorCode.PLAN_LIMIT_REACHED} (the plan's products or storage limit; \`limit\` and \`count\` in the problem)`,
  staff: `${ErrorCode.PLAN_LIMIT_REACHED} (the plan's staff or storage limit; \`limit\` and \`count\` in the problem)`,
};
/** A platform token sent to a route of store users. */
const STORE_TOKEN_ONLY = `${ErrorCode.WRONG_TOKEN_TYPE} (a platform token: this route needs a store token)`;

/** What every /api/store route reads and may answer, whatever the route: tenant resolution (resolve-tenant.ts). */
const TENANT_RESOLUTION: RouterDocs = {
  description:
    "**Which store.** The request's host (`Host`, or `X-Forwarded-Host` when the server trusts a proxy) when it is one of a store's " +
    "verified hostnames (never an IP address nor one of the platform's own hostnames); else the `X-Store-Id` header; else the " +
    "token's `storeId`. A host and a token, or a host and `X-Store-Id`, that name different stores → 403 `TENANT_MISMATCH`; no " +
    'store → 404 `STORE_NOT_FOUND`. A token, when sent, is checked even on public routes.\n\n' +
    "**Storage.** While a store's database is over its plan's `storageMb` (sampled every few minutes), its writes (POST, PUT, " +
    'PATCH, DELETE, but signing in and out) answer 403 `PLAN_LIMIT_REACHED`; reads go on.',
  headers: z.object({
    'X-Store-Id': z.uuid({ message: 'must be a UUID' }).optional().openapi({
      description: "The store addressed, when the host does not name one (the API's own hostname, an IP address)",
    }),
  }),
  errors: {
    ...TENANT_ERRORS,
    400: `${ErrorCode.VALIDATION_FAILED} (also: X-Store-Id is not a UUID)`,
    401: `${ErrorCode.UNAUTHENTICATED} (a token was sent and is invalid, expired or revoked)`,
  },
};

/** The storefront and store-admin API: every route runs inside the store resolved from host, header or token. */
export function storefrontRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/store', TENANT_RESOLUTION);
  api.router.use(resolveTenant(ctx), refuseWritesOverStorage(ctx));
  const limits = () => limitsOfStore(ctx, currentStoreId());
  const staff = requireStoreRole(ctx, ['admin', 'staff']);
  const admin = requireStoreRole(ctx, ['admin']);
  const anyone = requireStoreRole(ctx, ['admin', 'staff', 'customer']);
  const storeToken = requireAuth(ctx, 'store');
  const registerLimit = redisLimiter(ctx, 'store-register', {
    limit: ctx.config.rateLimit.registerMax,
    keyGenerator: (req) => `${currentStoreId()}:${ipKeyGenerator(req.ip ?? '')}`,
  });
  const hashingBusy = `${ErrorCode.TENANT_UNAVAILABLE} | ${ErrorCode.TENANT_MIGRATING} | ${ErrorCode.SERVICE_UNAVAILABLE} (with Retry-After)`;

  api.post(
    '/auth/register',
    {
      operationId: 'storeRegister',
      summary: 'A shopper signs up to this store',
      tags: ['store auth'],
      body: StoreRegisterBody,
      status: 201,
      response: StoreAuthResult,
      afterValidation: [registerLimit],
      errors: { ...TENANT_ERRORS, 409: 'EMAIL_TAKEN | STORE_NOT_READY', 429: 'RATE_LIMITED', 503: hashingBusy },
    },
    ({ body }) => users.registerCustomer(ctx, body),
  );
  api.post(
    '/auth/login',
    {
      operationId: 'storeLogin',
      summary: 'A store user signs in (store token)',
      tags: ['store auth'],
      body: StoreLoginBody,
      response: StoreAuthResult,
      afterValidation: loginLimiters(ctx, 'store-login', () => `${currentStoreId()}:`),
      errors: { ...TENANT_ERRORS, 401: 'INVALID_CREDENTIALS', 429: 'RATE_LIMITED', 503: hashingBusy },
    },
    ({ body }) => users.loginStoreUser(ctx, body),
  );
  api.get(
    '/auth/me',
    {
      operationId: 'storeMe',
      summary: 'The signed-in store user',
      tags: ['store auth'],
      secured: true,
      middleware: [storeToken],
      response: z.object({ user: StoreUserDto }),
      errors: { ...TENANT_ERRORS, 403: STORE_TOKEN_ONLY },
    },
    ({ req }) => {
      if (!req.auth) throw unauthenticated();
      return users.storeMe(req.auth.sub);
    },
  );
  api.post(
    '/auth/logout',
    {
      operationId: 'storeLogout',
      summary: 'Revoke this store token everywhere',
      tags: ['store auth'],
      secured: true,
      middleware: [storeToken],
      status: 204,
      errors: { ...TENANT_ERRORS, 403: `${STORE_TOKEN_ONLY} | ${ErrorCode.TENANT_MISMATCH}` },
    },
    async ({ req }) => {
      if (!req.auth) throw unauthenticated();
      await users.logoutStoreUser(ctx, req.auth);
    },
  );
  api.get(
    '/info',
    {
      operationId: 'getStoreInfo',
      summary: "The store's public profile",
      tags: ['storefront'],
      response: StoreInfoDto,
      errors: TENANT_ERRORS,
    },
    () => users.storeInfo(),
  );

  const optionalActor = (res: Parameters<typeof storeActorOf>[0]): StoreActor | undefined =>
    res.locals.actor as StoreActor | undefined;
  const maybeStaff = identifyActor(ctx);
  api.get(
    '/products',
    {
      operationId: 'listProducts',
      summary: 'The catalogue (public; staff may include inactive products)',
      tags: ['products'],
      secured: 'optional',
      query: ProductListQuery,
      response: pageOf(ProductDto),
      errors: TENANT_ERRORS,
      middleware: [maybeStaff],
    },
    ({ query, res }) =>
      products.listProducts({
        limit: query.limit,
        cursor: query.cursor,
        includeInactive: query.includeInactive === 'true' && products.canSeeInactive(optionalActor(res)),
      }),
  );
  api.get(
    '/products/:id',
    {
      operationId: 'getProduct',
      summary: 'One product (an inactive one only for staff)',
      tags: ['products'],
      secured: 'optional',
      params: ProductIdParams,
      response: ProductDto,
      errors: { ...TENANT_ERRORS, 404: 'NOT_FOUND | STORE_NOT_FOUND' },
      middleware: [maybeStaff],
    },
    ({ params, res }) => products.getProduct(params.id, optionalActor(res)),
  );
  api.post(
    '/products',
    {
      operationId: 'createProduct',
      summary: 'Add a product',
      tags: ['products'],
      secured: true,
      middleware: [staff],
      body: CreateProductBody,
      status: 201,
      response: ProductDto,
      errors: { ...TENANT_ERRORS, 403: PLAN_LIMITS.products, 409: 'SKU_TAKEN | STORE_NOT_READY' },
    },
    async ({ body, res }) => products.createProduct(body, storeActorOf(res), await limits()),
  );
  api.patch(
    '/products/:id',
    {
      operationId: 'updateProduct',
      summary: 'Change a product (at least one field)',
      tags: ['products'],
      secured: true,
      middleware: [staff],
      params: ProductIdParams,
      body: UpdateProductBody,
      response: ProductDto,
      errors: { ...TENANT_ERRORS, 404: 'NOT_FOUND', 409: 'SKU_TAKEN' },
    },
    ({ params, body, res }) => products.updateProduct(params.id, body, storeActorOf(res)),
  );
  api.delete(
    '/products/:id',
    {
      operationId: 'deleteProduct',
      summary: 'Remove a product (soft)',
      tags: ['products'],
      secured: true,
      middleware: [staff],
      params: ProductIdParams,
      status: 204,
      errors: { ...TENANT_ERRORS, 404: 'NOT_FOUND' },
    },
    ({ params, res }) => products.deleteProduct(params.id, storeActorOf(res)),
  );
  api.post(
    '/products/:id/restore',
    {
      operationId: 'restoreProduct',
      summary: 'Bring back a removed product (inactive until put back on sale)',
      tags: ['products'],
      secured: true,
      middleware: [staff],
      params: ProductIdParams,
      response: ProductDto,
      errors: {
        ...TENANT_ERRORS,
        404: 'NOT_FOUND | STORE_NOT_FOUND',
        403: PLAN_LIMITS.products,
        409: 'CONFLICT (not removed) | SKU_TAKEN (a live product has its SKU) | STORE_NOT_READY',
      },
    },
    async ({ params, res }) => products.restoreProduct(params.id, storeActorOf(res), await limits()),
  );

  api.get(
    '/customers',
    {
      operationId: 'listCustomers',
      summary: "The store's customers",
      tags: ['people'],
      secured: true,
      middleware: [staff],
      query: ListQuery,
      response: pageOf(CustomerDto),
      errors: TENANT_ERRORS,
    },
    ({ query }) => users.listCustomers(query),
  );
  api.post(
    '/staff',
    {
      operationId: 'createStaff',
      summary: 'Add an admin or staff member',
      tags: ['people'],
      secured: true,
      middleware: [admin],
      body: CreateStaffBody,
      status: 201,
      response: z.object({ user: StoreUserDto }),
      errors: { ...TENANT_ERRORS, 403: PLAN_LIMITS.staff, 409: 'EMAIL_TAKEN' },
    },
    async ({ body, res }) => users.createStaff(ctx, body, storeActorOf(res), await limits()),
  );

  api.post(
    '/orders',
    {
      operationId: 'placeOrder',
      summary: 'Place an order (customer)',
      tags: ['orders'],
      secured: true,
      middleware: [anyone],
      body: CreateOrderBody,
      status: 201,
      response: OrderDto,
      errors: {
        ...TENANT_ERRORS,
        400: 'VALIDATION_FAILED (also: products of different currencies)',
        404: 'NOT_FOUND (product)',
        409: 'OUT_OF_STOCK',
      },
    },
    ({ body, res }) => orders.placeOrder(body, storeActorOf(res)),
  );
  api.get(
    '/orders',
    {
      operationId: 'listOrders',
      summary: 'Orders: a customer sees their own, staff see all',
      tags: ['orders'],
      secured: true,
      middleware: [anyone],
      query: ListQuery,
      response: pageOf(OrderDto),
      errors: TENANT_ERRORS,
    },
    ({ query, res }) => orders.listOrders(storeActorOf(res), query),
  );
  api.get(
    '/orders/:id',
    {
      operationId: 'getOrder',
      summary: 'One order',
      tags: ['orders'],
      secured: true,
      middleware: [anyone],
      params: OrderIdParams,
      response: OrderDto,
      errors: { ...TENANT_ERRORS, 404: 'NOT_FOUND' },
    },
    ({ params, res }) => orders.getOrder(params.id, storeActorOf(res)),
  );
  return api;
}
