import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformActorOf, requireAuth } from '../http/authenticate';
import { ListQuery } from '../http/pagination';
import { StoreIdParams } from '../http/schemas';
import {
  CostsDto,
  CreditChangeDto,
  CreditsDto,
  PurchaseBody,
  PurchaseResultDto,
  SpendBody,
  WebhookAckDto,
} from './credits.schemas';
import * as credits from './credits.service';
import { handleStripeWebhook, STRIPE_WEBHOOK_PATH, StripeEventBody, StripeWebhookHeaders } from './stripe-webhook';

const ACCESS = { 403: 'FORBIDDEN (not a member, or the role may not)', 404: 'STORE_NOT_FOUND' };
const KEY_REUSED = 'CONFLICT (the idempotency key was used for a different request)';

/**
 * Credits (master DB): a store's balance and ledger, purchases, spending, the price list, and Stripe's
 * webhook. The admin's adjustment lives with the other admin routes. Decisions beyond API.md:
 * - Price: 1 credit = 1 euro cent (GET /api/credits/costs says so in `creditPrice`). The price list is public.
 * - Who: members read (owner, admin, staff) and spend (owner, admin, staff); only owner and admin buy;
 *   platform tokens only (store tokens get 403 WRONG_TOKEN_TYPE). A suspended store cannot spend (423).
 * - Idempotency keys are per store and shared by purchases, spends and adjustments. A repeat returns the
 *   first transaction (completed ones exactly as first answered, `balance` = its balanceAfter; a pending
 *   purchase as it is now). The same key with a different request → 409 CONFLICT. A refused request (4xx)
 *   does not use its key up.
 * - Stripe: a purchase answers 201 with the pending transaction and `payment.reference`; the client's
 *   checkout puts it into the PaymentIntent / Checkout Session metadata as `tenantry_reference` (or as
 *   Checkout's client_reference_id). payment_intent.succeeded and checkout.session.completed (paid) complete
 *   it once; an unknown reference, a repeat, a short payment or any other event → 200 `{ received: true,
 *   ignored: true, reason }`, since Stripe retries every non-2xx answer. A bad or missing signature → 400.
 * - Adjustments never take the balance below 0: 402 INSUFFICIENT_CREDITS, like a spend.
 */
export function creditsRoutes(ctx: AppContext): ApiRouter[] {
  const tags = ['credits'];

  const stores = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  const common = { tags, secured: true, middleware: [requireAuth(ctx, 'platform')] };
  stores.get(
    '/:id/credits',
    {
      ...common,
      operationId: 'getStoreCredits',
      summary: "The store's balance and its transactions, newest first (owner, admin, staff)",
      params: StoreIdParams,
      query: ListQuery,
      response: CreditsDto,
      errors: ACCESS,
    },
    ({ params, query, req }) => credits.getCredits(ctx, platformActorOf(req).userId, params.id, query),
  );
  stores.post(
    '/:id/credits/purchase',
    {
      ...common,
      operationId: 'purchaseCredits',
      summary:
        'Buy credits (owner, admin): completed at once with the manual provider, pending until the Stripe webhook with stripe',
      params: StoreIdParams,
      body: PurchaseBody,
      status: 201,
      response: PurchaseResultDto,
      errors: { ...ACCESS, 400: 'VALIDATION_FAILED (also: fewer credits than a card payment buys)', 409: KEY_REUSED },
    },
    ({ params, body, req }) => credits.purchaseCredits(ctx, platformActorOf(req), params.id, body),
  );
  stores.post(
    '/:id/credits/spend',
    {
      ...common,
      operationId: 'spendCredits',
      summary: 'Spend credits on a service: quantity × its cost per unit (owner, admin, staff)',
      params: StoreIdParams,
      body: SpendBody,
      status: 201,
      response: CreditChangeDto,
      errors: {
        ...ACCESS,
        400: 'VALIDATION_FAILED (also: unknown service)',
        402: 'INSUFFICIENT_CREDITS (nothing changed)',
        409: KEY_REUSED,
        423: 'STORE_SUSPENDED',
      },
    },
    ({ params, body, req }) => credits.spendCredits(ctx, platformActorOf(req), params.id, body),
  );

  // The price list is public: the onboarding wizard and pricing pages show it before anyone signs in.
  const costs = new ApiRouter('/api/credits');
  costs.get(
    '/costs',
    {
      tags,
      operationId: 'listCreditCosts',
      summary: 'What every service costs in credits, and what a credit costs',
      response: CostsDto,
    },
    () => credits.listCosts(ctx),
  );

  const webhooks = new ApiRouter(STRIPE_WEBHOOK_PATH.replace(/\/stripe$/, ''));
  webhooks.post(
    '/stripe',
    {
      tags,
      operationId: 'receiveStripeWebhook',
      summary:
        'Stripe webhook (signed with STRIPE_WEBHOOK_SECRET): a succeeded payment completes its pending purchase once; anything else is acknowledged and ignored',
      description:
        'Called by Stripe, not by clients. The signature covers the exact bytes sent, so the body is read raw, whatever its Content-Type.',
      headers: StripeWebhookHeaders,
      rawBody: {
        contentType: 'application/json',
        schema: StripeEventBody,
        description: 'A Stripe event, exactly as Stripe sent and signed it',
      },
      response: WebhookAckDto,
      errors: { 400: 'VALIDATION_FAILED (missing or bad Stripe-Signature, or no body) | MALFORMED_JSON' },
    },
    ({ req }) =>
      handleStripeWebhook(ctx, req.body, req.headers['stripe-signature'], req.id === undefined ? null : String(req.id)),
  );

  return [stores, costs, webhooks];
}
