import { Gauge } from 'prom-client';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { metricsOf } from '../http/metrics';
import { RUN_STATES, STORE_STATES } from './migration-runs.service';

const registered = new WeakSet<AppContext>();

/**
 * Fleet migration runs on /metrics, read from the master DB at each scrape (so every instance tells the same,
 * whichever worker drove the run): runs by state, and the stores of the latest run by state. Per-store outcomes
 * as each driver saw them are tenantry_tenant_migration_outcomes_total (counted from the job's result).
 */
export function registerMigrationMetrics(ctx: AppContext): void {
  if (registered.has(ctx)) return;
  registered.add(ctx);
  const registers = [metricsOf(ctx).registry];
  new Gauge({
    name: 'tenantry_migration_runs',
    help: 'Fleet migration runs by state (queued, canary, running, paused, stopped, completed, failed)',
    labelNames: ['state'] as const,
    registers,
    async collect() {
      const rows = await ctx.master.sequelize.query<{ state: string; n: number }>(
        `SELECT state, count(*)::int AS n FROM migration_runs GROUP BY state`,
        { type: QueryTypes.SELECT },
      );
      for (const state of RUN_STATES) this.set({ state }, rows.find((r) => r.state === state)?.n ?? 0);
    },
  });
  new Gauge({
    name: 'tenantry_migration_run_stores',
    help: 'Stores of the latest fleet migration run by state (pending, running, migrated, skipped, failed)',
    labelNames: ['state'] as const,
    registers,
    async collect() {
      const rows = await ctx.master.sequelize.query<{ state: string; n: number }>(
        `SELECT s.state, count(*)::int AS n FROM migration_run_stores s
          WHERE s.run_id = (SELECT id FROM migration_runs ORDER BY created_at DESC, id DESC LIMIT 1) GROUP BY s.state`,
        { type: QueryTypes.SELECT },
      );
      for (const state of STORE_STATES) this.set({ state }, rows.find((r) => r.state === state)?.n ?? 0);
    },
  });
}
