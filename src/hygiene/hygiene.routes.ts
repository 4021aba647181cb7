import type { RequestHandler } from 'express';
import type { AppContext } from '../app-context';
import { platformAdminRouter, type ApiRouter } from '../http/api-router';
import { platformClaims } from '../http/authenticate';
import { runDriftCheck } from './drift';
import { DriftQuery, DriftReport, ReconcileBody, ReconcileReport } from './hygiene.schemas';
import { reconcile } from './reconcile';

/** Fleet hygiene: drift and reconcile (platform admins: `adminOnly` is the admin router's guard). */
export function hygieneRoutes(ctx: AppContext, adminOnly: RequestHandler[]): ApiRouter {
  const { api, common } = platformAdminRouter(adminOnly);
  api.get(
    '/tenants/drift',
    {
      ...common,
      operationId: 'checkTenantDrift',
      summary: "Drift: each store database's migrations and catalogue against what the code ships",
      description:
        'Every active store with a ready database: its `migrations` table against the shipped tenant migrations (missing, changed checksum, ' +
        'applied but not shipped), then its catalogue (tables, columns, indexes, constraints, owners, privileges) against the template of the ' +
        'current schema by fingerprint; differences in words. Each tenant server `perServer` stores at a time. The check is kept: ' +
        '`?resume=<checkId>` finishes one that was cut off.',
      query: DriftQuery,
      response: DriftReport,
      errors: { ...common.errors, 404: 'NOT_FOUND (no such check to resume)' },
    },
    ({ query, req }) =>
      runDriftCheck(ctx, platformClaims(req.auth).sub, { perServer: query.perServer, resume: query.resume }),
  );
  api.post(
    '/tenants/reconcile',
    {
      ...common,
      operationId: 'reconcileTenantServers',
      summary: 'Reconcile the tenant servers with the registry: a dry run, or the safe repairs with `apply`',
      description:
        'Orphaned databases and roles (named with TENANT_DB_PREFIX), registered databases that are missing, stores provisioning without ' +
        'a live job, databases whose owner or CONNECT rights differ, warm-pool leftovers, interrupted template builds and stale templates. ' +
        '`apply` restores owners and CONNECT rights, re-queues lost provisioning jobs, drops orphaned roles and leftovers; an orphaned ' +
        'database is dropped only with `dropOrphans` as well (audited).',
      // Optional: a bodyless POST is a dry run.
      body: ReconcileBody.optional(),
      response: ReconcileReport,
    },
    ({ body, req }) => {
      const userId = platformClaims(req.auth).sub;
      return reconcile(ctx, { userId, label: userId }, body ?? {});
    },
  );
  return api;
}
