import { randomBytes, randomUUID } from 'node:crypto';
import type { Express } from 'express';
import request from 'supertest';
import type { AppContext } from '../../src/app-context';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth, provisionManagedStore } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * What Prometheus reads: /metrics opens to the scrape token (METRICS_TOKEN), which never expires, or to a
 * platform admin's JWT; its series move with the traffic and never carry a store id or a raw path.
 */
const METRICS_TOKEN = randomBytes(32).toString('hex');
const t = useSuite('metrics', { WORKER: 'on', METRICS_TOKEN });
let api: RecordingClient;
let withoutToken: { ctx: AppContext; app: Express } | undefined;
let admin: Awaited<ReturnType<typeof registerAdmin>>;

beforeAll(async () => {
  api = recordingClient(t.app);
  admin = await registerAdmin(t);
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition. */
function parseExposition(text: string): Sample[] {
  return text
    .split('\n')
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      if (!m) throw new Error(`not an exposition line: ${line}`);
      const labels = Object.fromEntries(
        [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]),
      );
      return { name: m[1], labels, value: Number(m[3]) };
    });
}

async function scrape(): Promise<Sample[]> {
  const res = await api.get('/metrics').set(auth(METRICS_TOKEN)).expect(200);
  return parseExposition(res.text);
}

/** The value of the one sample with this name and (at least) these labels; 0 when there is none. */
function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} names ${found.length} series`);
  return found[0]?.value ?? 0;
}

describe('who may read /metrics', () => {
  test('Prometheus reads it with METRICS_TOKEN; no token gets 401, a wrong one 401, a user 403, an admin JWT 200', async () => {
    const res = await api.get('/metrics').set(auth(METRICS_TOKEN)).expect(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(res.text).toMatch(/^# HELP tenantry_http_requests_total /m);
    await api.get('/metrics').set('Authorization', `bearer ${METRICS_TOKEN}`).expect(200);

    expectProblem(await api.get('/metrics'), 401, 'UNAUTHENTICATED');
    // One character off (the random token may itself end in 0: then 1).
    const offByOne = `${METRICS_TOKEN.slice(0, -1)}${METRICS_TOKEN.endsWith('0') ? '1' : '0'}`;
    expectProblem(await api.get('/metrics').set(auth(offByOne)), 401, 'UNAUTHENTICATED');
    expectProblem(await api.get('/metrics').set(auth(`${METRICS_TOKEN}a`)), 401, 'UNAUTHENTICATED');
    expectProblem(await api.get('/metrics').set('Authorization', METRICS_TOKEN), 401, 'UNAUTHENTICATED');
    const user = await registerUser(t.app);
    expectProblem(await api.get('/metrics').set(auth(user.token)), 403, 'FORBIDDEN');
    await api.get('/metrics').set(auth(admin.token)).expect(200);
  });

  test('the scrape token opens /metrics only: the admin API and the queue board refuse it', async () => {
    for (const path of ['/api/admin/pools', '/admin/queues', '/api/auth/me'])
      expectProblem(await api.get(path).set(auth(METRICS_TOKEN)), 401, 'UNAUTHENTICATED');
  });

  test('without METRICS_TOKEN configured, only an admin JWT opens /metrics', async () => {
    withoutToken = await t.instance({});
    expect(withoutToken.ctx.config.metricsToken).toBeUndefined();
    expectProblem(await request(withoutToken.app).get('/metrics').set(auth(METRICS_TOKEN)), 401, 'UNAUTHENTICATED');
    await request(withoutToken.app).get('/metrics').set(auth(admin.token)).expect(200);
  });
});

describe('what /metrics says after traffic', () => {
  test('request, tenant, queue, job, provisioning and migration series move; no label is a store id or a raw path', async () => {
    const before = await scrape();
    const owner = await registerUser(t.app);
    const store = await provisionManagedStore(t.app, owner.token);
    const atStore = (path: string) => api.get(path).set('X-Store-Id', store.id);
    for (let i = 0; i < 3; i++) await atStore('/api/store/info').expect(200);
    const missing = randomUUID();
    expectProblem(await atStore(`/api/store/products/${missing}`), 404, 'NOT_FOUND');
    expectProblem(await api.get(`/api/no-such-route/${missing}`), 404, 'NOT_FOUND');
    const run = await api.post('/api/admin/tenants/migrate').set(auth(admin.token)).expect(202);
    await eventually(async () => {
      const res = await api.get(`/api/admin/tenants/migrate/${run.body.runId}`).set(auth(admin.token)).expect(200);
      if (res.body.state !== 'completed') throw new Error(`run is ${JSON.stringify(res.body)}`);
    }, 20000);
    // The worker reports a job after it has been moved to completed: the run's answer can come first.
    const after = await eventually(async () => {
      const samples = await scrape();
      if (
        valueOf(samples, 'tenantry_job_duration_seconds_count', { queue: 'tenant-migrations', outcome: 'completed' }) <
        1
      )
        throw new Error('the migration run is not counted yet');
      return samples;
    }, 5000);

    const moved = (name: string, labels: Record<string, string> = {}) =>
      valueOf(after, name, labels) - valueOf(before, name, labels);
    // HTTP: by route pattern and status; the unknown path under one fixed label.
    expect(moved('tenantry_http_requests_total', { method: 'GET', route: '/api/store/info', status: '200' })).toBe(3);
    expect(
      moved('tenantry_http_requests_total', { method: 'GET', route: '/api/store/products/:id', status: '404' }),
    ).toBe(1);
    expect(
      moved('tenantry_http_requests_total', { method: 'POST', route: '/api/stores/:id/database', status: '202' }),
    ).toBe(1);
    expect(moved('tenantry_http_requests_total', { method: 'GET', route: 'unmatched', status: '404' })).toBe(1);
    expect(
      moved('tenantry_http_request_duration_seconds_count', {
        method: 'GET',
        route: '/api/store/info',
        status_class: '2xx',
      }),
    ).toBe(3);
    expect(
      moved('tenantry_http_request_duration_seconds_bucket', {
        method: 'GET',
        route: '/api/store/info',
        status_class: '2xx',
        le: '+Inf',
      }),
    ).toBe(3);
    expect(
      moved('tenantry_http_request_duration_seconds_sum', {
        method: 'GET',
        route: '/api/store/info',
        status_class: '2xx',
      }),
    ).toBeGreaterThan(0);
    // The connection manager: one handle built for the store, then served from the cache.
    expect(moved('tenantry_tenant_handle_builds_total')).toBeGreaterThanOrEqual(1);
    expect(moved('tenantry_tenant_handle_misses_total')).toBeGreaterThanOrEqual(1);
    expect(moved('tenantry_tenant_handle_hits_total')).toBeGreaterThanOrEqual(2);
    expect(valueOf(after, 'tenantry_tenant_handles')).toBeGreaterThanOrEqual(1);
    expect(valueOf(after, 'tenantry_tenant_connections_max')).toBe(t.ctx.config.tenant.connectionsMax);
    for (const name of [
      'tenantry_tenant_connections_open',
      'tenantry_tenant_connections_waiting',
      'tenantry_tenant_connections_reclaimed_total',
      'tenantry_tenant_fences_total',
      'tenantry_tenants_fenced',
    ]) {
      expect(after.some((s) => s.name === name)).toBe(true);
    }
    // Queues and jobs.
    expect(moved('tenantry_job_duration_seconds_count', { queue: 'provisioning', outcome: 'completed' })).toBe(1);
    expect(moved('tenantry_job_duration_seconds_sum', { queue: 'provisioning', outcome: 'completed' })).toBeGreaterThan(
      0,
    );
    expect(moved('tenantry_provisioning_outcomes_total', { outcome: 'completed' })).toBe(1);
    expect(moved('tenantry_provisioning_outcomes_total', { outcome: 'failed' })).toBe(0);
    expect(moved('tenantry_tenant_migration_outcomes_total', { outcome: 'unchanged' })).toBe(1);
    expect(moved('tenantry_tenant_migration_outcomes_total', { outcome: 'failed' })).toBe(0);
    for (const queue of ['provisioning', 'tenant-migrations', 'credit-sync', 'maintenance']) {
      for (const state of ['waiting', 'active', 'delayed', 'prioritized', 'failed']) {
        expect(
          after.filter((s) => s.name === 'tenantry_queue_jobs' && s.labels.queue === queue && s.labels.state === state),
        ).toHaveLength(1);
      }
    }

    // Bounded labels: no store, user or run id anywhere, no raw path, every route a pattern.
    const ids = [store.id, owner.user.id, admin.user.id, missing, store.slug];
    const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
    for (const s of after) {
      for (const [label, value] of Object.entries(s.labels)) {
        if (UUID.test(value) || ids.some((id) => value.includes(id)))
          throw new Error(`${s.name}{${label}="${value}"} names an id`);
      }
    }
    const routes = new Set(after.filter((s) => s.labels.route !== undefined).map((s) => s.labels.route));
    expect(routes).toContain('/api/store/products/:id');
    for (const route of routes) expect(route).toMatch(/^(unmatched|\/[A-Za-z0-9_\-/.:*{}]*)$/);
    for (const route of routes) for (const segment of route.split('/')) expect(segment).not.toMatch(/^\d+$/);
  });
});
