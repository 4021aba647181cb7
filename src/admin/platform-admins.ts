import { LRUCache } from 'lru-cache';
import { audit } from '../db/audit';
import type { MasterDb } from '../db/master';
import type { EventBus } from '../lib/bus';
import { ErrorCode, fail } from '../lib/errors';

/**
 * Who is a platform admin. The master DB's users.role is the only record: nobody becomes one by registering,
 * the operator grants and revokes the role with the command line (`tenantry admin:grant|revoke <email>`), and
 * every admin request reads the role from the DB (cached a few seconds per instance, dropped on the bus), never
 * from the token's `role` claim.
 */

/** What granting and revoking need: the same master DB and bus in the API and in the command line. */
export interface PlatformAdminDeps {
  master: MasterDb;
  bus: EventBus;
}

export type PlatformRole = 'user' | 'platform_admin';

export interface RoleChange {
  userId: string;
  email: string;
  role: PlatformRole;
  /** false when the account already had this role (nothing was written). */
  changed: boolean;
}

export const grantPlatformAdmin = (deps: PlatformAdminDeps, email: string, actor: string) =>
  setPlatformRole(deps, email, 'platform_admin', actor);
export const revokePlatformAdmin = (deps: PlatformAdminDeps, email: string, actor: string) =>
  setPlatformRole(deps, email, 'user', actor);

/**
 * Give an existing account this role, with an audit_log row (`actor` says who did it, e.g. the operator's
 * login), then tell every instance to forget the role it cached. Unknown e-mail → 404.
 */
async function setPlatformRole(
  deps: PlatformAdminDeps,
  rawEmail: string,
  role: PlatformRole,
  actor: string,
): Promise<RoleChange> {
  const email = rawEmail.trim().toLowerCase();
  const { User } = deps.master.models;
  const result = await deps.master.sequelize.transaction(async (t) => {
    const user = await User.findOne({ where: { email }, transaction: t, lock: t.LOCK.UPDATE });
    if (!user) throw fail(ErrorCode.NOT_FOUND, `No account has the e-mail ${email}; it must register first`);
    if (user.role === role) return { userId: user.id, email, role, changed: false };
    await user.update({ role }, { transaction: t });
    await audit(deps.master, t, {
      actorUserId: null,
      action: role === 'platform_admin' ? 'user.platform_admin.granted' : 'user.platform_admin.revoked',
      targetType: 'user',
      targetId: user.id,
      data: { email, role, by: actor },
    });
    return { userId: user.id, email, role, changed: true };
  });
  // After the commit: an instance that drops its cached role must read the new one.
  if (result.changed) await deps.bus.publish({ type: 'user.role.changed', userId: result.userId });
  return result;
}

/** How long an instance trusts a role it read; the bus message normally drops it sooner. */
export const ROLE_CACHE_TTL_MS = 5000;

/** The platform role of users as the master DB holds it, cached briefly per instance. */
export class PlatformRoles {
  private readonly cache = new LRUCache<string, PlatformRole | 'none'>({ max: 10_000, ttl: ROLE_CACHE_TTL_MS });
  /** Bumped on every invalidation: a read that started before one must not cache what it read. */
  private epoch = 0;

  constructor(
    private readonly master: MasterDb,
    bus: EventBus,
  ) {
    bus.on('user.role.changed', (e) => this.forget(e.userId));
    // Messages may have been missed while the subscriber was away.
    bus.onReconnect(() => this.forget());
  }

  async isPlatformAdmin(userId: string): Promise<boolean> {
    return (await this.roleOf(userId)) === 'platform_admin';
  }

  private async roleOf(userId: string): Promise<PlatformRole | 'none'> {
    const cached = this.cache.get(userId);
    if (cached) return cached;
    const epoch = this.epoch;
    const user = await this.master.models.User.findByPk(userId, { attributes: ['role'] });
    const role = user ? user.role : 'none';
    if (epoch === this.epoch) this.cache.set(userId, role);
    return role;
  }

  private forget(userId?: string): void {
    this.epoch++;
    if (userId) this.cache.delete(userId);
    else this.cache.clear();
  }
}

const perContext = new WeakMap<PlatformAdminDeps, PlatformRoles>();

/** The one role cache of an application context (every admin guard of an instance shares it). */
export function platformRoles(deps: PlatformAdminDeps): PlatformRoles {
  let roles = perContext.get(deps);
  if (!roles) perContext.set(deps, (roles = new PlatformRoles(deps.master, deps.bus)));
  return roles;
}
