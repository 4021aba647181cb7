import express from 'express';
import Stripe from 'stripe';
import { z } from 'zod';
import type { AppContext } from '../app-context';
import { ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';
import { requestCreditSync } from '../queue/credit-sync-request';
import { handleSubscriptionEvent, SUBSCRIPTION_EVENTS } from '../subscriptions/stripe-subscriptions';
import type { WebhookAck } from './credits.schemas';
import { completePendingPurchase, type PendingPayment } from './ledger';

export const STRIPE_WEBHOOK_PATH = '/api/webhooks/stripe';

/** The signature covers the exact bytes Stripe sent: this route reads its body raw, before express.json. */
export const stripeWebhookBody = express.raw({ type: () => true, limit: '100kb' });

/** For the document: what the webhook reads of a request (the handler below checks it, on the raw bytes). */
export const StripeWebhookHeaders = z.object({
  'Stripe-Signature': z.string().openapi({
    description: "Stripe's signature of the body: `t=<timestamp>,v1=<HMAC-SHA256>` with the endpoint's secret",
  }),
});
export const StripeEventBody = z
  .looseObject({
    id: z.string(),
    type: z
      .string()
      .describe(
        'payment_intent.succeeded, checkout.session.completed and checkout.session.async_payment_succeeded complete ' +
          'credit purchases; customer.subscription.created, .updated and .deleted set the plan of the account whose ' +
          'pending change (`tenantry_reference` in the subscription metadata) or Stripe subscription they name',
      ),
    data: z.looseObject({ object: z.looseObject({}).describe('The PaymentIntent, Checkout Session or Subscription') }),
  })
  .describe('A Stripe event (https://docs.stripe.com/api/events/object); fields not listed are ignored');

/** The metadata key (or Checkout's client_reference_id) that carries our payment reference. */
export const REFERENCE_KEY = 'tenantry_reference';

/** Events that mean "this payment succeeded". */
const PAID_EVENTS = new Set([
  'payment_intent.succeeded',
  'checkout.session.completed',
  'checkout.session.async_payment_succeeded',
]);

/** The parts of a PaymentIntent or Checkout Session we read; everything else is ignored. */
const PaymentObject = z.object({
  id: z.string(),
  object: z.string(),
  metadata: z.record(z.string(), z.string()).nullish(),
  client_reference_id: z.string().nullish(),
  amount_received: z.number().int().nullish(),
  amount_total: z.number().int().nullish(),
  currency: z.string().nullish(),
  payment_status: z.string().nullish(),
});

const badSignature = (detail: string) => fail(ErrorCode.VALIDATION_FAILED, detail);
const ignored = (reason: string): WebhookAck => ({ received: true, ignored: true, reason });

/**
 * Stripe's webhook. The signature is checked against the raw body (bad or missing → 400, nothing changes).
 * A succeeded payment completes the pending purchase it names, exactly once however often it is delivered.
 * Everything else — other event types, a reference we do not know, a repeat — is acknowledged with 200 and
 * `ignored: true`: Stripe retries every non-2xx answer for days, and retrying cannot make these succeed.
 */
export async function handleStripeWebhook(
  ctx: AppContext,
  rawBody: unknown,
  signature: string | string[] | undefined,
  requestId: string | null = null,
): Promise<WebhookAck> {
  const secret = ctx.config.stripeWebhookSecret;
  if (!secret) throw badSignature('Stripe webhooks are not configured on this server');
  if (typeof signature !== 'string' || !signature) throw badSignature('The Stripe-Signature header is missing');
  if (!Buffer.isBuffer(rawBody) || rawBody.length === 0) throw badSignature('The webhook has no body');
  let event: Stripe.Event;
  try {
    event = Stripe.webhooks.constructEvent(rawBody, signature, secret);
  } catch (err) {
    if (err instanceof SyntaxError) throw fail(ErrorCode.MALFORMED_JSON, 'The request body is not valid JSON');
    throw badSignature('The Stripe-Signature header does not match the body (or is too old)');
  }
  if (SUBSCRIPTION_EVENTS.has(event.type)) return handleSubscriptionEvent(ctx, event, requestId);
  if (!PAID_EVENTS.has(event.type)) return ignored(`event type ${event.type} is not handled`);

  const parsed = PaymentObject.safeParse(event.data?.object);
  if (!parsed.success) return ignored('the event does not carry a payment object');
  const paid = parsed.data;
  if (paid.object === 'checkout.session' && paid.payment_status !== 'paid')
    return ignored('the checkout session is not paid yet');
  const reference = paid.metadata?.[REFERENCE_KEY] ?? paid.client_reference_id ?? paid.id;
  const amountCents = paid.amount_received ?? paid.amount_total ?? null;
  const currency = paid.currency?.toUpperCase() ?? null;

  // A payment for less (or in another currency) than the purchase asked for completes nothing.
  const check = (p: PendingPayment) =>
    (amountCents !== null && amountCents < p.amountCents) ||
    (currency !== null && currency !== p.currency.trim().toUpperCase())
      ? `paid ${amountCents} ${currency}, expected ${p.amountCents} ${p.currency.trim()}`
      : null;
  const outcome = await completePendingPurchase(ctx, 'stripe', reference, check, {
    provider: 'stripe',
    eventId: event.id,
    eventType: event.type,
    reference,
    requestId,
  });
  switch (outcome.kind) {
    case 'completed':
      await requestCreditSync(ctx, outcome.row.storeId);
      return { received: true };
    case 'unknown':
      logger.info({ eventId: event.id, reference }, 'Stripe webhook for a payment we do not know; ignored');
      return ignored('no pending purchase has this reference');
    case 'not-pending':
      return ignored(`this payment was already processed (${outcome.status})`);
    case 'rejected':
      logger.warn(
        { eventId: event.id, reference, storeId: outcome.storeId, reason: outcome.reason },
        'Stripe payment does not match its purchase; not completed',
      );
      return ignored(`the payment does not match the purchase (${outcome.reason})`);
  }
}
