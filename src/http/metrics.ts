import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { AppContext } from '../context';
import type { ResponseCounts } from './request-log';

/** Prometheus metrics of one process: the connection manager's state, HTTP answers, and Node's own. */
export function createMetrics(ctx: AppContext, responseCounts: ResponseCounts): { registry: Registry } {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'tenantry_' });
  new Counter({
    name: 'tenantry_http_responses_total',
    help: 'HTTP answers by status class',
    labelNames: ['status'],
    registers: [registry],
    collect() {
      // The request logger keeps the running totals; publish them as they are.
      this.reset();
      for (const [status, n] of responseCounts) this.labels(status).inc(n);
    },
  });

  const gauge = (name: string, help: string, read: (s: ReturnType<typeof ctx.tenants.stats>) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read(ctx.tenants.stats()));
      },
    });
  gauge('tenantry_tenant_handles', 'Tenant handles cached', (s) => s.handles);
  gauge('tenantry_tenant_connections_open', 'Tenant connections open', (s) => s.connections.open);
  gauge('tenantry_tenant_connections_max', 'Cap on tenant connections', (s) => s.connections.max);
  gauge('tenantry_tenant_connections_waiting', 'Requests waiting for a connection slot', (s) => s.connections.waiting);
  gauge('tenantry_tenant_connection_waits_total', 'Times a request had to wait for a slot', (s) => s.connections.waits);
  gauge('tenantry_tenant_connection_wait_timeouts_total', 'Waits that timed out', (s) => s.connections.waitTimeouts);
  gauge('tenantry_tenant_handle_hits_total', 'Handle cache hits', (s) => s.hits);
  gauge('tenantry_tenant_handle_misses_total', 'Handle cache misses', (s) => s.misses);
  gauge('tenantry_tenant_handle_evictions_total', 'Handles evicted from the cache', (s) => s.evictions);
  gauge('tenantry_tenant_handle_build_ms_avg', 'Average time to build a handle', (s) => s.avgBuildMs);
  gauge('tenantry_tenants_fenced', 'Stores whose database is fenced off now', (s) => s.fenced.length);

  return { registry };
}
