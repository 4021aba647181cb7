import { spawn } from 'node:child_process';
import path from 'node:path';
import type { Express } from 'express';
import { QueryTypes } from 'sequelize';
import request from 'supertest';
import { grantPlatformAdmin, revokePlatformAdmin, ROLE_CACHE_TTL_MS } from '../../src/admin/platform-admins';
import type { AppContext } from '../../src/app-context';
import { registerUser, uniqueEmail } from '../helpers/app';
import { eventually } from '../helpers/fixtures';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { auth } from '../helpers/stores';
import { useSuite } from '../helpers/suite';

/**
 * Platform admins are made by the operator (`tenantry admin:grant|revoke`), never by registering, and the role
 * is read from the master DB on every admin request: a grant or a revocation reaches tokens already issued, on
 * every instance, at once.
 */
const t = useSuite('platform_admins');
let api: RecordingClient;
let other: { ctx: AppContext; app: Express };

beforeAll(async () => {
  api = recordingClient(t.app);
  other = await t.instance();
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

/** Every route behind the platform-admin check: the admin API, Prometheus metrics, the queue board. */
const ADMIN_PATHS = ['/api/admin/pools', '/metrics', '/admin/queues'];

async function expectAdmin(app: Express, token: string) {
  for (const p of ADMIN_PATHS) {
    const res = await request(app).get(p).set(auth(token));
    if (res.status !== 200) throw new Error(`${p} answered ${res.status} ${res.text.slice(0, 200)}`);
  }
}

async function expectNotAdmin(app: Express, token: string) {
  for (const p of ADMIN_PATHS) expectProblem(await request(app).get(p).set(auth(token)), 403, 'FORBIDDEN');
}

/** Well within the role cache's lifetime: what changes sooner came over the bus, not from an expiry. */
const BUS_DELAY_MS = ROLE_CACHE_TTL_MS / 5;

async function roleAudit(userId: string) {
  return t.ctx.master.sequelize.query<{
    action: string;
    actor: string | null;
    data: { by: string; email: string; role: string };
  }>(
    `SELECT action, actor_user_id AS actor, data FROM audit_log WHERE target_type = 'user' AND target_id = :userId AND action LIKE 'user.platform_admin.%' ORDER BY id`,
    { replacements: { userId }, type: QueryTypes.SELECT },
  );
}

describe('granting and revoking through the service the command line uses', () => {
  test('a grant opens the admin routes, /metrics and the queue board to a token issued before it, on every instance', async () => {
    const user = await registerUser(t.app);
    expect(t.ctx.tokens.verify(user.token)).toMatchObject({ role: 'user' });
    // Both instances have now read (and cached) the role `user`.
    await expectNotAdmin(t.app, user.token);
    await expectNotAdmin(other.app, user.token);

    const change = await grantPlatformAdmin(t.ctx, ` ${user.user.email.toUpperCase()} `, 'test-operator');
    expect(change).toEqual({ userId: user.user.id, email: user.user.email, role: 'platform_admin', changed: true });
    expect((await t.ctx.master.models.User.findByPk(user.user.id, { rejectOnEmpty: true })).role).toBe(
      'platform_admin',
    );

    await expectAdmin(t.app, user.token);
    await eventually(() => expectAdmin(other.app, user.token), BUS_DELAY_MS);
    expect((await api.get('/api/auth/me').set(auth(user.token)).expect(200)).body.user.role).toBe('platform_admin');

    // Granting again changes nothing and says so.
    expect(await grantPlatformAdmin(t.ctx, user.user.email, 'test-operator')).toMatchObject({ changed: false });
    expect(await roleAudit(user.user.id)).toEqual([
      {
        action: 'user.platform_admin.granted',
        actor: null,
        data: { by: 'test-operator', email: user.user.email, role: 'platform_admin' },
      },
    ]);
  });

  test('a revocation answers 403 at once on another instance to the same unexpired token, whatever its role claim says', async () => {
    const user = await registerUser(t.app);
    await grantPlatformAdmin(t.ctx, user.user.email, 'test-operator');
    // A token that carries role platform_admin, issued while the account was one.
    const login = await api
      .post('/api/auth/login')
      .send({ email: user.user.email, password: user.password })
      .expect(200);
    const token = login.body.token as string;
    expect(t.ctx.tokens.verify(token)).toMatchObject({ role: 'platform_admin' });
    await eventually(() => expectAdmin(other.app, token), BUS_DELAY_MS);

    expect(await revokePlatformAdmin(t.ctx, user.user.email, 'test-operator')).toMatchObject({
      role: 'user',
      changed: true,
    });
    await expectNotAdmin(t.app, token);
    await eventually(() => expectNotAdmin(other.app, token), BUS_DELAY_MS);
    // The token itself is still good for everything else, and shows the DB's role.
    const me = await api.get('/api/auth/me').set(auth(token)).expect(200);
    expect(me.body.user.role).toBe('user');
    expect((await roleAudit(user.user.id)).map((r) => r.action)).toEqual([
      'user.platform_admin.granted',
      'user.platform_admin.revoked',
    ]);

    expect(await revokePlatformAdmin(t.ctx, user.user.email, 'test-operator')).toMatchObject({ changed: false });
  });

  test('an e-mail without an account is refused (404) and nothing is written', async () => {
    const before = await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log', {
      type: QueryTypes.SELECT,
    });
    await expect(grantPlatformAdmin(t.ctx, uniqueEmail('nobody'), 'test-operator')).rejects.toMatchObject({
      status: 404,
      code: 'NOT_FOUND',
    });
    const after = await t.ctx.master.sequelize.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log', {
      type: QueryTypes.SELECT,
    });
    expect(after[0].n).toBe(before[0].n);
  });
});

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const root = path.join(__dirname, '..', '..');

/** The real command line in a child process, on this suite's master DB and Redis prefix. */
function runCli(args: string[], cwd = root): Promise<CliResult> {
  const child = spawn(process.execPath, [path.join(root, 'bin', 'tenantry.js'), ...args], {
    cwd,
    env: { ...process.env, DATABASE_URL: t.db.url, REDIS_PREFIX: t.ctx.redisPrefix },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`tenantry ${args.join(' ')} did not finish in 30 s: ${stdout} ${stderr}`));
    }, 30_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('the tenantry command line', () => {
  test('--help lists admin:grant and admin:revoke, also when run from another directory of the project', async () => {
    const res = await runCli(['--help'], path.join(root, 'src', 'admin'));
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('admin:grant <email>');
    expect(res.stdout).toContain('admin:revoke <email>');
  });

  test('admin:grant and admin:revoke change users.role, audit it and reach running instances at once; exit codes 0', async () => {
    const user = await registerUser(t.app);
    await expectNotAdmin(other.app, user.token);

    const granted = await runCli(['admin:grant', user.user.email]);
    expect(granted).toEqual({ code: 0, stdout: `${user.user.email} is now a platform admin.\n`, stderr: '' });
    expect((await t.ctx.master.models.User.findByPk(user.user.id, { rejectOnEmpty: true })).role).toBe(
      'platform_admin',
    );
    // The running instances heard it over Redis: no restart, no new token.
    await eventually(() => expectAdmin(other.app, user.token), BUS_DELAY_MS);

    const again = await runCli(['admin:grant', user.user.email.toUpperCase()]);
    expect(again).toEqual({ code: 0, stdout: `${user.user.email} is already a platform admin.\n`, stderr: '' });

    const revoked = await runCli(['admin:revoke', user.user.email]);
    expect(revoked).toEqual({ code: 0, stdout: `${user.user.email} is no longer a platform admin.\n`, stderr: '' });
    expect((await t.ctx.master.models.User.findByPk(user.user.id, { rejectOnEmpty: true })).role).toBe('user');
    await eventually(() => expectNotAdmin(other.app, user.token), BUS_DELAY_MS);

    const audit = await roleAudit(user.user.id);
    expect(audit.map((r) => r.action)).toEqual(['user.platform_admin.granted', 'user.platform_admin.revoked']);
    expect(audit[0].data.by).toMatch(/^cli:/);
  });

  test('an unknown e-mail is a clear message on stderr and exit code 1, changing nothing', async () => {
    const email = uniqueEmail('nobody');
    const res = await runCli(['admin:grant', email]);
    expect(res.code).toBe(1);
    expect(res.stdout).toBe('');
    expect(res.stderr).toBe(`error: No account has the e-mail ${email}; it must register first\n`);
    expect(await t.ctx.master.models.User.count({ where: { email } })).toBe(0);

    const missingArgument = await runCli(['admin:revoke']);
    expect(missingArgument.code).toBe(1);
    expect(missingArgument.stderr).toContain("missing required argument 'email'");
  });
});
