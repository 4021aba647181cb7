import { Counter, Histogram } from 'prom-client';
import type { AppContext } from '../app-context';
import { metricsOf } from '../http/metrics';

/** Store moves on /metrics, counted by the process whose worker ran them (like the other job outcomes). */
export interface MoveMetrics {
  completed(writePauseMs: number): void;
  failed(): void;
}

const perContext = new WeakMap<AppContext, MoveMetrics>();

/** The move series of a context, registered on first use (at start-up by the routes, so they exist at 0). */
export function moveMetrics(ctx: AppContext): MoveMetrics {
  let m = perContext.get(ctx);
  if (m) return m;
  const registers = [metricsOf(ctx).registry];
  const outcomes = new Counter({
    name: 'tenantry_store_moves_total',
    help: 'Store database moves to another tenant server, by outcome: completed (the store switched), failed (it kept its database)',
    labelNames: ['outcome'] as const,
    registers,
  });
  const pause = new Histogram({
    name: 'tenantry_store_move_write_pause_seconds',
    help: "How long a move held the store's requests: the final catch-up and the switch",
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    registers,
  });
  for (const outcome of ['completed', 'failed']) outcomes.inc({ outcome }, 0);
  m = {
    completed(writePauseMs) {
      outcomes.inc({ outcome: 'completed' });
      pause.observe(writePauseMs / 1000);
    },
    failed() {
      outcomes.inc({ outcome: 'failed' });
    },
  };
  perContext.set(ctx, m);
  return m;
}
