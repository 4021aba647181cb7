import cors from 'cors';
import express, { type Express } from 'express';
import helmet from 'helmet';
import swaggerUi from 'swagger-ui-express';
import { authRoutes } from './auth/auth.routes';
import type { AppContext } from './app-context';
import { ApiRouter, methodNotAllowed } from './http/api-router';
import { requireJsonBody } from './http/json-body';
import { openApiDocument } from './http/openapi';
import { notFoundHandler, problemHandler } from './http/problem';
import { requestLog, routeBase } from './http/request-log';
import { healthRoutes } from './health/health.routes';
import { creditsRoutes } from './credits/credits.routes';
import { STRIPE_WEBHOOK_PATH, stripeWebhookBody } from './credits/stripe-webhook';
import { metricsOf, metricsRoutes } from './http/metrics';
import { storefrontRoutes } from './storefront/storefront.routes';
import { storesRoutes } from './stores/stores.routes';
import { onboardingRoutes } from './onboarding/onboarding.routes';
import { adminRoutes, queueBoard, requirePlatformAdmin } from './admin/admin.routes';
import { adminLoginPage } from './admin/admin-session';
import { subscriptionRoutes } from './subscriptions/subscriptions.routes';
import { auditRoutes } from './audit/audit.routes';
import { usageRoutes } from './usage/usage.routes';
import { migrationRunRoutes } from './migrations/migration-runs.routes';
import { registerMigrationMetrics } from './migrations/migration.metrics';
import { hygieneRoutes } from './hygiene/hygiene.routes';
import { moveRoutes } from './moves/moves.routes';
import { registerHygieneMetrics } from './hygiene/hygiene.metrics';
import { backupRoutes } from './backups/backups.routes';
import { exportRoutes } from './exports/export.routes';

/**
 * Every route of the API. Building them registers them in the OpenAPI document (see ApiRouter), which is how
 * `npm run openapi` writes the document without starting anything.
 */
export function apiRouters(ctx: AppContext): ApiRouter[] {
  return [
    healthRoutes(ctx),
    authRoutes(ctx),
    storesRoutes(ctx),
    onboardingRoutes(ctx),
    adminRoutes(ctx),
    migrationRunRoutes(ctx, requirePlatformAdmin(ctx)),
    hygieneRoutes(ctx, requirePlatformAdmin(ctx)),
    moveRoutes(ctx, requirePlatformAdmin(ctx)),
    storefrontRoutes(ctx),
    ...creditsRoutes(ctx),
    ...subscriptionRoutes(ctx, requirePlatformAdmin(ctx)),
    usageRoutes(ctx),
    ...auditRoutes(ctx, requirePlatformAdmin(ctx)),
    backupRoutes(ctx),
    exportRoutes(ctx),
  ];
}

/** Builds the Express app (no listen): server.ts serves it, tests drive it with supertest. */
export function createApp(ctx: AppContext, options: { extraRouters?: ApiRouter[] } = {}): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', ctx.config.trustProxy);
  app.use(requestLog(metricsOf(ctx).observeRequest));
  app.use(helmet());
  app.use(
    cors({
      origin: (origin, cb) => cb(null, !!origin && ctx.config.corsOrigins.includes(origin)),
      exposedHeaders: ['X-Request-Id', 'Retry-After'],
      maxAge: 600,
    }),
  );
  const routers = [...apiRouters(ctx), ...(options.extraRouters ?? [])];
  app.use(methodNotAllowed(routers));
  // Stripe signs the exact bytes it sends: its webhook reads the body raw (express.json then leaves it be).
  app.use(STRIPE_WEBHOOK_PATH, stripeWebhookBody);
  app.use(express.json({ limit: '100kb', strict: true }));
  app.use('/api', requireJsonBody);

  // routeBase: request metrics are labelled by route pattern, mount included.
  for (const r of routers) app.use(r.basePath, routeBase(r.basePath), r.router);

  // Prometheus scrapes with METRICS_TOKEN, or a platform admin's bearer token.
  registerMigrationMetrics(ctx);
  registerHygieneMetrics(ctx);
  app.use(metricsRoutes(ctx, requirePlatformAdmin(ctx)));

  app.use(adminLoginPage());
  const board = queueBoard(ctx);
  app.use(board.path, routeBase(board.path), ...board.guard, board.router);

  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument());
  });
  app.use(
    '/docs',
    routeBase('/docs'),
    swaggerUi.serve,
    swaggerUi.setup(undefined, { swaggerOptions: { url: '/openapi.json' } }),
  );

  app.use(notFoundHandler);
  app.use(problemHandler);
  return app;
}
