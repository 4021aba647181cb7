import type { RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { platformAdminRouter, type ApiRouter } from '../http/api-router';
import { platformClaims } from '../http/authenticate';
import {
  DryRunPlan,
  MigrationRun,
  MigrationRunStores,
  RunIdParams,
  RunOptions,
  RunStarted,
  RunStoresQuery,
} from './migration-runs.schemas';
import * as runs from './migration-runs.service';

const actorOf = (auth: Parameters<typeof platformClaims>[0]): runs.Actor => {
  const userId = platformClaims(auth).sub;
  return { userId, label: userId };
};

/** Fleet migration runs (platform admins: `adminOnly` is the admin router's guard). */
export function migrationRunRoutes(ctx: AppContext, adminOnly: RequestHandler[]): ApiRouter {
  const { api, common } = platformAdminRouter(adminOnly);
  const run = { ...common, params: RunIdParams, errors: { ...common.errors, 404: 'NOT_FOUND (no such run)' } };
  api.post(
    '/tenants/migrate',
    {
      ...common,
      operationId: 'startTenantMigration',
      summary: 'Start a fleet migration run: every active store database to the newest tenant schema',
      description:
        'Canary stores first (any failing fails the run), then each tenant server `perServer` stores at a time, servers side by side; ' +
        'more than `maxFailures` failed stores stop it. Stores already at the target version are skipped without a connection. ' +
        'With `dryRun`, 200 and what would be applied to whom, nothing started.',
      // Optional: a bodyless POST (as before runs had options) migrates every store with the defaults.
      body: RunOptions.optional(),
      status: 202,
      response: RunStarted,
      otherResponses: { 200: { description: 'dryRun: the plan', schema: DryRunPlan } },
      errors: { ...common.errors, 409: 'MIGRATION_RUN_ACTIVE (a run is active: its `runId` is in the problem)' },
    },
    async ({ body, req, res }) => {
      const { dryRun, ...options } = body ?? {};
      if (dryRun) {
        res.status(200).json(await runs.dryRun(ctx, options));
        return undefined;
      }
      return runs.createRun(ctx, actorOf(req.auth), options);
    },
  );
  api.get(
    '/tenants/migrate/:runId',
    {
      ...run,
      operationId: 'getTenantMigrationRun',
      summary: 'A migration run: its state and counts',
      response: MigrationRun,
    },
    ({ params }) => runs.getRun(ctx, params.runId),
  );
  api.get(
    '/tenants/migrate/:runId/stores',
    {
      ...run,
      operationId: 'listTenantMigrationRunStores',
      summary: "A migration run's stores: state, versions, duration, error",
      query: RunStoresQuery,
      response: MigrationRunStores,
    },
    ({ params, query }) => runs.listRunStores(ctx, params.runId, query),
  );
  for (const action of ['pause', 'resume', 'stop'] as const) {
    api.post(
      `/tenants/migrate/:runId/${action}`,
      {
        ...run,
        operationId: `${action}TenantMigrationRun`,
        summary: {
          pause: 'Pause a run: no store is started any more (those migrating finish)',
          resume: 'Resume a paused run where it was',
          stop: 'Stop a run for good (stores not started stay pending)',
        }[action],
        response: MigrationRun,
        errors: { ...run.errors, 409: `CONFLICT (the run's state does not allow it)` },
      },
      ({ params, req }) => runs.changeRun(ctx, actorOf(req.auth), params.runId, action),
    );
  }
  return api;
}
