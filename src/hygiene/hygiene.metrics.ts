import { Gauge } from 'prom-client';
import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { metricsOf } from '../http/metrics';
import { RECONCILE_KINDS } from './reconcile';

const registered = new WeakSet<AppContext>();

/**
 * The latest reconcile report's findings by kind on /metrics (the daily dry run's, or a later call's), read from
 * the master DB at each scrape so every instance tells the same whichever worker ran it; and its age.
 */
export function registerHygieneMetrics(ctx: AppContext): void {
  if (registered.has(ctx)) return;
  registered.add(ctx);
  const registers = [metricsOf(ctx).registry];
  const latest = async () =>
    (
      await ctx.master.sequelize.query<{ counts: Record<string, number>; age: number }>(
        `SELECT counts, extract(epoch FROM now() - created_at)::float8 AS age FROM reconcile_reports ORDER BY created_at DESC, id DESC LIMIT 1`,
        { type: QueryTypes.SELECT },
      )
    )[0];
  new Gauge({
    name: 'tenantry_reconcile_findings',
    help: 'Findings of the latest reconcile report by kind (orphaned_database, stuck_provisioning, connect_differs …)',
    labelNames: ['kind'] as const,
    registers,
    async collect() {
      const row = await latest();
      for (const kind of RECONCILE_KINDS) this.set({ kind }, row?.counts[kind] ?? 0);
    },
  });
  new Gauge({
    name: 'tenantry_reconcile_report_age_seconds',
    help: 'Age of the latest reconcile report (-1: none yet); the worker makes a dry run daily',
    registers,
    async collect() {
      this.set((await latest())?.age ?? -1);
    },
  });
}
