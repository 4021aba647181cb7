import { z } from 'zod';
import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformClaims, requireAuth } from '../http/authenticate';
import * as service from './onboarding.service';

const OnboardingDto = z.object({
  complete: z.boolean(),
  storeId: z.uuid().nullable(),
  steps: z.array(
    z.object({
      id: z.enum(['store', 'database', 'payments', 'credits', 'profile']),
      required: z.boolean(),
      done: z.boolean(),
      skipped: z.boolean(),
    }),
  ),
});

export function onboardingRoutes(ctx: AppContext): ApiRouter {
  const api = new ApiRouter('/api/onboarding', { securedErrors: { 403: WRONG_TOKEN } });
  const common = { tags: ['onboarding'], secured: true, middleware: [requireAuth(ctx, 'platform')] };
  api.get(
    '',
    {
      ...common,
      operationId: 'getOnboarding',
      summary: "The onboarding wizard's steps for the active store",
      response: OnboardingDto,
    },
    ({ req }) => service.onboarding(ctx, platformClaims(req.auth)),
  );
  api.post(
    '/steps/:id/skip',
    {
      ...common,
      operationId: 'skipOnboardingStep',
      summary: 'Skip a skippable step',
      // The document names the skippable steps; the route answers any other id itself (400 or 404).
      params: z.object({
        id: z
          .string()
          .max(40)
          .openapi({ enum: ['payments', 'credits'] }),
      }),
      response: OnboardingDto,
      errors: {
        400: 'STEP_NOT_SKIPPABLE (a required step)',
        404: 'NOT_FOUND (no such step)',
        409: 'CONFLICT (no store yet)',
      },
    },
    ({ params, req }) => service.skipStep(ctx, platformClaims(req.auth), params.id),
  );
  return api;
}
