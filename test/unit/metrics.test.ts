import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Worker } from 'bullmq';
import type { Request } from 'express';
import { Histogram, type Registry } from 'prom-client';
import type { AppContext } from '../../src/app-context';
import { instrumentWorker, metricsOf } from '../../src/http/metrics';
import { routeBase, routeLabel, UNMATCHED_ROUTE } from '../../src/http/request-log';

/**
 * A context that is never read: metrics touch the context only when scraped (collect callbacks), and these
 * tests read only metrics that have none.
 */
const fakeContext = () => ({}) as AppContext;

/** The sum of the samples of `series` (a histogram's `_count`, `_sum`, `_bucket`, or the metric itself) with these labels. */
async function value(registry: Registry, name: string, labels: Record<string, string>, series = name): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  return values
    .filter(
      (v) =>
        ((v as { metricName?: string }).metricName ?? name) === series &&
        Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l),
    )
    .reduce((sum, v) => sum + v.value, 0);
}

describe('job metrics', () => {
  const fakeWorker = (name: string) => Object.assign(new EventEmitter(), { name });

  test('a provisioning job counts as completed, skipped, retried (an attempt failed) or failed (the last one did)', async () => {
    const ctx = fakeContext();
    const { registry } = metricsOf(ctx);
    const worker = fakeWorker('provisioning');
    instrumentWorker(ctx, worker as unknown as Worker);
    const now = Date.now();
    worker.emit('completed', { processedOn: now - 1500, finishedOn: now }, { schemaVersion: 3 });
    worker.emit('completed', { processedOn: now - 10, finishedOn: now }, { skipped: 'active' });
    worker.emit('failed', { processedOn: now - 200 }, new Error('first attempt'));
    worker.emit('failed', { processedOn: now - 300, finishedOn: now }, new Error('last attempt'));

    const outcomes = 'tenantry_provisioning_outcomes_total';
    expect(await value(registry, outcomes, { outcome: 'completed' })).toBe(1);
    expect(await value(registry, outcomes, { outcome: 'skipped' })).toBe(1);
    expect(await value(registry, outcomes, { outcome: 'retried' })).toBe(1);
    expect(await value(registry, outcomes, { outcome: 'failed' })).toBe(1);

    const durations = 'tenantry_job_duration_seconds';
    const count = `${durations}_count`;
    expect(await value(registry, durations, { queue: 'provisioning', outcome: 'completed' }, count)).toBe(2);
    expect(await value(registry, durations, { queue: 'provisioning', outcome: 'failed' }, count)).toBe(1);
    expect(await value(registry, durations, { queue: 'provisioning', outcome: 'retried' }, count)).toBe(1);
    expect(
      await value(registry, durations, { queue: 'provisioning', outcome: 'completed' }, `${durations}_sum`),
    ).toBeCloseTo(1.51, 5);
    // 1.5 s is over the 1 s bucket, 10 ms under it.
    expect(
      await value(registry, durations, { queue: 'provisioning', outcome: 'completed', le: '1' }, `${durations}_bucket`),
    ).toBe(1);
  });

  test('a migration run counts each store database it visited: migrated, unchanged or failed', async () => {
    const ctx = fakeContext();
    const { registry } = metricsOf(ctx);
    const worker = fakeWorker('tenant-migrations');
    instrumentWorker(ctx, worker as unknown as Worker);
    worker.emit(
      'completed',
      { processedOn: Date.now() - 50, finishedOn: Date.now() },
      { total: 6, done: 6, migrated: 2, failures: [{ storeId: 'a', error: 'x' }] },
    );
    const outcomes = 'tenantry_tenant_migration_outcomes_total';
    expect(await value(registry, outcomes, { outcome: 'migrated' })).toBe(2);
    expect(await value(registry, outcomes, { outcome: 'failed' })).toBe(1);
    expect(await value(registry, outcomes, { outcome: 'unchanged' })).toBe(3);
  });
});

describe('route labels', () => {
  const request = (fields: Partial<Request>, base?: string) => {
    const req = { ...fields } as Request;
    if (base !== undefined) routeBase(base)(req, {} as never, () => {});
    return req;
  };

  test('are the mount and the route pattern, never the raw path', () => {
    expect(
      routeLabel(
        request({ route: { path: '/products/:id' } as never, originalUrl: '/api/store/products/42' }, '/api/store'),
      ),
    ).toBe('/api/store/products/:id');
    expect(routeLabel(request({ route: { path: '/metrics' } as never }))).toBe('/metrics');
  });

  test('a request no route handled is `unmatched`, or `<mount>/*` when a router refused it', () => {
    expect(routeLabel(request({ originalUrl: '/nowhere/42' }))).toBe(UNMATCHED_ROUTE);
    expect(routeLabel(request({ originalUrl: '/nowhere/42' }, ''))).toBe(UNMATCHED_ROUTE);
    expect(routeLabel(request({ originalUrl: '/api/store/products/42' }, '/api/store'))).toBe('/api/store/*');
  });
});

describe('the Grafana dashboard (ops/grafana/tenantry.json)', () => {
  const dashboard = JSON.parse(readFileSync(path.resolve(__dirname, '../../ops/grafana/tenantry.json'), 'utf8'));
  const { registry } = metricsOf(fakeContext());
  const metrics = new Map(registry.getMetricsAsArray().map((m) => [m.name, m]));
  /** Names a PromQL expression may use: a histogram is read through its _bucket, _sum and _count series. */
  const series = new Map<string, string>();
  for (const [name, m] of metrics) {
    series.set(name, name);
    if (m instanceof Histogram) for (const suffix of ['_bucket', '_sum', '_count']) series.set(name + suffix, name);
  }
  const labelsOf = (name: string) => (metrics.get(name) as unknown as { labelNames: string[] }).labelNames;

  type Panel = {
    id: number;
    type: string;
    title: string;
    datasource?: { uid: string };
    targets?: { expr: string; legendFormat?: string; datasource?: { uid: string } }[];
    panels?: Panel[];
  };
  const panels: Panel[] = (dashboard.panels as Panel[]).flatMap((p) => [p, ...(p.panels ?? [])]);
  const expressions = panels.flatMap((p) =>
    (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr, legend: t.legendFormat ?? '' })),
  );
  const variableQueries = (dashboard.templating.list as { query: { query: string } | string }[]).map((v) => ({
    panel: 'variables',
    expr: typeof v.query === 'string' ? v.query : v.query.query,
    legend: '',
  }));

  test('is importable as is: the Prometheus data source is an input, every panel and query uses it', () => {
    expect(dashboard.__inputs).toEqual([
      expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }),
    ]);
    expect(dashboard).toMatchObject({
      title: expect.any(String),
      uid: expect.stringMatching(/^[a-z0-9-]{1,40}$/),
      schemaVersion: expect.any(Number),
    });
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    for (const p of panels.filter((p) => p.type !== 'row')) {
      expect(p.datasource).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      expect(p.targets!.length).toBeGreaterThan(0);
      for (const t of p.targets!) expect(t.datasource).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
    }
    // No data source of the exporter's own Grafana is left in it.
    expect(
      JSON.stringify(dashboard)
        .match(/"uid":\s*"[^"]*"/g)!
        .filter(
          (u) => !u.includes('${DS_PROMETHEUS}') && !u.includes('-- Grafana --') && !u.includes('tenantry-overview'),
        ),
    ).toEqual([]);
  });

  test('every metric its expressions name is one the application exports, with the labels it has', () => {
    for (const { panel, expr, legend } of [...expressions, ...variableQueries]) {
      let depth = 0;
      for (const c of expr) {
        depth += '({['.includes(c) ? 1 : ')}]'.includes(c) ? -1 : 0;
        if (depth < 0) throw new Error(`${panel}: unbalanced brackets in ${expr}`);
      }
      if (depth !== 0) throw new Error(`${panel}: unbalanced brackets in ${expr}`);

      const named = [...expr.matchAll(/\b(tenantry_[a-z0-9_]+)\b/g)].map((m) => m[1]);
      expect(named.length).toBeGreaterThan(0);
      const allowed = new Set(['instance', 'job', 'le']);
      for (const name of named) {
        if (!series.has(name)) throw new Error(`${panel}: ${name} is not exported (${expr})`);
        for (const label of labelsOf(series.get(name)!)) allowed.add(label);
      }
      const usedLabels = [
        ...[...expr.matchAll(/\{([^}]*)\}/g)].flatMap((m) =>
          [...m[1].matchAll(/([a-z_]+)\s*(=~|!~|!=|=)/g)].map((l) => l[1]),
        ),
        ...[...expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) => m[1].split(',').map((l) => l.trim())),
        ...[...legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)].map((m) => m[1]),
      ];
      for (const label of usedLabels)
        if (!allowed.has(label)) throw new Error(`${panel}: label ${label} is not on ${named.join(', ')} (${expr})`);
    }
  });

  test("has a panel for every metric of Tenantry's own (not Node's defaults)", () => {
    const used = new Set(
      expressions.flatMap(({ expr }) => [...expr.matchAll(/\b(tenantry_[a-z0-9_]+)\b/g)].map((m) => series.get(m[1]))),
    );
    const own = [...metrics.keys()].filter((name) => !/^tenantry_(process|nodejs)_/.test(name));
    expect(own.length).toBeGreaterThan(20);
    expect(own.filter((name) => !used.has(name))).toEqual([]);
  });
});
