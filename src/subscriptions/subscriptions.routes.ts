import type { RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformActorOf, requireAuth } from '../http/authenticate';
import { ErrorCode } from '../lib/errors';
import { ChangePlanBody, PlansDto, SubscriptionDto, UserIdParams } from './subscriptions.schemas';
import * as subscriptions from './subscriptions.service';

const EXCEEDED = `${ErrorCode.PLAN_LIMIT_EXCEEDED} (what the account holds is over the plan's limits: \`over\` lists each)`;

/**
 * Plans and subscriptions (master DB). Decisions beyond API.md:
 * - A subscription is the account's (the owner's): its plan's limits apply to every store it owns. `stores` is
 *   counted over the account; products, staff, custom hostnames and storage per store.
 * - A change with the manual provider applies at once (200) and keeps the running billing period; with Stripe it
 *   is pending (202, `pending.reference` for the checkout's subscription metadata `tenantry_reference`) until the
 *   signed `customer.subscription.updated` applies it (`.deleted` cancels). Past due or cancelled: the free
 *   plan's limits, nothing deleted. Included credits go once per billing period to the account's oldest store.
 * - An unknown plan → 404 NOT_FOUND. A platform admin's change applies at once, with the same usage check.
 */
export function subscriptionRoutes(ctx: AppContext, adminOnly: RequestHandler[]): ApiRouter[] {
  const tags = ['plans'];

  const plans = new ApiRouter('/api/plans');
  plans.get(
    '',
    {
      operationId: 'listPlans',
      summary: 'The plans, with their limits (null: unlimited), price and included credits (public)',
      tags,
      response: PlansDto,
    },
    () => subscriptions.listPlans(ctx),
  );

  const subscription = new ApiRouter('/api/subscription', { securedErrors: { 403: WRONG_TOKEN } });
  const common = { tags, secured: true, middleware: [requireAuth(ctx, 'platform')] };
  subscription.get(
    '',
    {
      ...common,
      operationId: 'getSubscription',
      summary: "The caller's plan in force, subscription state, pending change and usage",
      response: SubscriptionDto,
    },
    ({ req }) => subscriptions.getSubscription(ctx, platformActorOf(req).userId),
  );
  subscription.post(
    '',
    {
      ...common,
      operationId: 'changeSubscription',
      summary: 'Change plan: at once with the manual provider (200), or pending until Stripe confirms it (202)',
      body: ChangePlanBody,
      response: SubscriptionDto,
      otherResponses: {
        202: { description: 'Stripe: the change is pending until its signed webhook', schema: SubscriptionDto },
      },
      errors: { 404: 'NOT_FOUND (no such plan)', 409: EXCEEDED },
    },
    async ({ body, req, res }) => {
      const { status, body: answer } = await subscriptions.changePlan(ctx, platformActorOf(req), body);
      res.status(status).json(answer);
      return undefined;
    },
  );

  const admin = new ApiRouter('/api/admin', { securedErrors: { 403: WRONG_TOKEN } });
  admin.put(
    '/users/:id/plan',
    {
      tags: ['platform admin'],
      secured: true,
      middleware: adminOnly,
      operationId: 'setUserPlan',
      summary: "Set an account's plan at once, whatever the payment provider",
      params: UserIdParams,
      body: ChangePlanBody,
      response: SubscriptionDto,
      errors: { 403: 'FORBIDDEN (not a platform admin)', 404: 'NOT_FOUND (no such user or plan)', 409: EXCEEDED },
    },
    ({ params, body, req }) => subscriptions.setUserPlan(ctx, platformActorOf(req), params.id, body),
  );
  return [plans, subscription, admin];
}
