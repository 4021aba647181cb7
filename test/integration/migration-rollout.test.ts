import request from 'supertest';
import { QueryTypes } from 'sequelize';
import { registerAdmin } from '../helpers/admins';
import { registerUser } from '../helpers/app';
import { SECOND_SERVER_URL } from '../helpers/db';
import { eventually } from '../helpers/fixtures';
import { expectProblem } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import {
  dropStoresAfterwards,
  makeStores,
  marks,
  rowStates as states,
  tenantMigrationsWithOneMore,
} from '../helpers/tenant-migrations';

/**
 * Steering fleet migration runs: pause and resume, stop, and the bound per tenant server (the in-process
 * worker drives them; the extra tenant migration sleeps 0.4 s in the `slow…` stores).
 */
let migration: { dir: string; version: number; fileName: string };
const t = useSuite('migration-rollout', (s) => {
  migration = tenantMigrationsWithOneMore(s);
  return { WORKER: 'on', WORKER_LOCK_MS: '3000', TENANT_MIGRATIONS_DIR: migration.dir };
});
let admin: Awaited<ReturnType<typeof registerAdmin>>;
let ownerId: string;

beforeAll(async () => {
  admin = await registerAdmin(t);
  ownerId = (await registerUser(t.app)).user.id;
});

const post = (path: string, body: object = {}) =>
  request(t.app).post(`/api/admin/tenants/migrate${path}`).set(auth(admin.token)).send(body);
const get = (path: string) => request(t.app).get(`/api/admin/tenants/migrate${path}`).set(auth(admin.token));
const stores = (names: string[], server?: string) => makeStores(t, ownerId, names, server);
const ids = (list: { id: string }[]) => list.map((s) => s.id);
const rowStates = (runId: string) => states(t, runId);

async function start(body: object): Promise<string> {
  return (await post('', body).expect(202)).body.runId as string;
}

async function until(runId: string, wanted: string[], timeoutMs = 20_000) {
  return eventually(async () => {
    const res = await get(`/${runId}`).expect(200);
    if (!wanted.includes(res.body.state)) throw new Error(`run is ${JSON.stringify(res.body)}`);
    return res.body;
  }, timeoutMs);
}

describe('steering a run', () => {
  dropStoresAfterwards(() => t);

  test('pause: no store starts until resumed; resume finishes it; invalid transitions answer 409', async () => {
    const fleet = await stores(['slow', 'slow', 'slow']);
    const runId = await start({ stores: ids(fleet), perServer: 1 });
    await eventually(async () => {
      if (!Object.values(await rowStates(runId)).includes('running')) throw new Error('nothing running yet');
    }, 10_000);
    expect((await post(`/${runId}/pause`).expect(200)).body.state).toBe('paused');
    expectProblem(await post(`/${runId}/pause`), 409, 'CONFLICT');
    // The store being migrated finishes; then nothing moves.
    await eventually(async () => {
      if (Object.values(await rowStates(runId)).includes('running')) throw new Error('still running');
    }, 10_000);
    const paused = await get(`/${runId}`).expect(200);
    expect(paused.body.state).toBe('paused');
    expect(paused.body.pending).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 1500));
    expect((await get(`/${runId}`).expect(200)).body.pending).toBe(paused.body.pending);

    expect((await post(`/${runId}/resume`).expect(200)).body.state).toMatch(/^(running|completed)$/);
    expect(await until(runId, ['completed'])).toMatchObject({ migrated: 3, pending: 0 });
    expectProblem(await post(`/${runId}/resume`), 409, 'CONFLICT');
    expectProblem(await post(`/${runId}/stop`), 409, 'CONFLICT');
    const audited = await t.ctx.master.sequelize.query<{ action: string }>(
      `SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id`,
      {
        bind: [runId],
        type: QueryTypes.SELECT,
      },
    );
    expect(audited.map((a) => a.action)).toEqual([
      'migration_run.started',
      'migration_run.paused',
      'migration_run.resumed',
      'migration_run.finished',
    ]);
  });

  test('a run paused during its canaries resumes through them, then goes on to the others', async () => {
    const [canary, other] = await stores(['slow', 'slow']);
    const runId = await start({ stores: ids([canary, other]), canary: [canary.id] });
    await eventually(async () => {
      if ((await rowStates(runId))[canary.id] !== 'running') throw new Error('the canary is not running yet');
    }, 10_000);
    expect((await post(`/${runId}/pause`).expect(200)).body.state).toBe('paused');
    await eventually(async () => {
      expect(await rowStates(runId)).toEqual({ [canary.id]: 'migrated', [other.id]: 'pending' });
    }, 10_000);
    expect((await post(`/${runId}/resume`).expect(200)).body.state).toBe('canary');
    expect(await until(runId, ['completed'])).toMatchObject({ migrated: 2, failed: 0, pending: 0 });
  });

  test('stop: the run ends, stores not started stay pending and untouched', async () => {
    const fleet = await stores(['slow', 'slow', 'slow']);
    const runId = await start({ stores: ids(fleet), perServer: 1 });
    await eventually(async () => {
      if (!Object.values(await rowStates(runId)).includes('running')) throw new Error('nothing running yet');
    }, 10_000);
    const stopped = await post(`/${runId}/stop`).expect(200);
    expect(stopped.body).toMatchObject({ state: 'stopped', finishedAt: expect.any(String) });
    await eventually(async () => {
      if (Object.values(await rowStates(runId)).includes('running')) throw new Error('still running');
    }, 10_000);
    const states = Object.values(await rowStates(runId));
    expect(states.filter((s) => s === 'pending').length).toBeGreaterThanOrEqual(1);
    expectProblem(await post(`/${runId}/resume`), 409, 'CONFLICT');
    // A new run may start: this one no longer holds the index.
    const next = await start({ stores: ids(fleet) });
    expect(await until(next, ['completed'])).toMatchObject({ failed: 0, pending: 0 });
    for (const s of fleet) expect(await marks(s)).toBe(1);
  });

  test('each server migrates at most perServer stores at once, servers side by side', async () => {
    const first = await stores(['slow', 'slow', 'slow', 'slow']);
    const second = await stores(['slow', 'slow', 'slow', 'slow'], SECOND_SERVER_URL);
    const runId = await start({ stores: ids([...first, ...second]), perServer: 2 });
    const peak = new Map<string, number>();
    let bothAtOnce = false;
    for (;;) {
      const running = await t.ctx.master.sequelize.query<{ server: string; n: number }>(
        `SELECT server, count(*)::int AS n FROM migration_run_stores WHERE run_id = $1 AND state = 'running' GROUP BY server`,
        { bind: [runId], type: QueryTypes.SELECT },
      );
      for (const r of running) peak.set(r.server, Math.max(peak.get(r.server) ?? 0, r.n));
      if (running.length === 2) bothAtOnce = true;
      const [{ state }] = await t.ctx.master.sequelize.query<{ state: string }>(
        `SELECT state FROM migration_runs WHERE id = $1`,
        {
          bind: [runId],
          type: QueryTypes.SELECT,
        },
      );
      if (state === 'completed') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect([...peak.values()]).toEqual([2, 2]);
    expect(bothAtOnce).toBe(true);
  });
});
