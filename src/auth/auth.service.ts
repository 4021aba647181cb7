import type { AppContext } from '../app-context';
import { audit, auditEvent } from '../db/audit';
import { ErrorCode, fail } from '../lib/errors';
import type { PlatformClaims } from '../lib/jwt';
import { burnPasswordCheck, hashPassword, upgradedHash, verifyPassword } from '../lib/passwords';
import type { PlatformUser } from '../models/master';
import { activeStoreId, listUserStores, memberRole } from '../stores/membership';
import { rethrowTaken } from '../db/errors';
import type { LoginInput, ProfileInput, RegisterInput } from './auth.schemas';

export function toUserDto(u: PlatformUser) {
  return {
    id: u.id,
    email: u.email,
    name: u.name,
    role: u.role,
    phone: u.phone ?? null,
    avatarUrl: u.avatarUrl ?? null,
    company: u.company ?? {},
    createdAt: u.createdAt.toISOString(),
  };
}

function platformToken(ctx: AppContext, user: PlatformUser, storeId: string | null): string {
  const claims: PlatformClaims = { sub: user.id, typ: 'platform', role: user.role, storeId };
  return ctx.tokens.sign(claims).token;
}

export async function register(ctx: AppContext, input: RegisterInput, requestId?: string) {
  const passwordHash = await hashPassword(input.password);
  // Never an admin by registering: only the operator's `tenantry admin:grant` makes one.
  const user: PlatformUser = await ctx.master.sequelize
    .transaction(async (t) => {
      const created = await ctx.master.models.User.create(
        { email: input.email, passwordHash, name: input.name, role: 'user' },
        { transaction: t },
      );
      await audit(ctx.master, t, {
        actorUserId: created.id,
        action: 'user.registered',
        targetType: 'user',
        targetId: created.id,
        requestId,
      });
      return created;
    })
    .catch(rethrowTaken('An account with this e-mail already exists'));
  return { user: toUserDto(user), token: platformToken(ctx, user, null) };
}

/**
 * A failed login, in the audit log: the account tried (or, for an unknown e-mail, the e-mail, which the login
 * schema has already checked is one), never the password. The login limiters bound how many are written.
 */
async function auditFailedLogin(ctx: AppContext, email: string, user: PlatformUser | null, requestId?: string) {
  await auditEvent(ctx.master, {
    actorUserId: null,
    action: 'auth.login.failed',
    // An unknown e-mail has no account to name: the e-mail is the target.
    targetType: user ? 'user' : 'email',
    targetId: user?.id ?? email,
    data: { reason: user ? 'wrong_password' : 'unknown_email' },
    requestId,
  });
}

export async function login(ctx: AppContext, input: LoginInput, requestId?: string) {
  const user = await ctx.master.models.User.findOne({ where: { email: input.email } });
  // Same answer and a similar cost whether the e-mail or the password is wrong.
  if (!user) {
    await burnPasswordCheck(input.password);
    await auditFailedLogin(ctx, input.email, null, requestId);
    throw fail(ErrorCode.INVALID_CREDENTIALS, 'The e-mail or password is wrong');
  }
  if (!(await verifyPassword(input.password, user.passwordHash))) {
    await auditFailedLogin(ctx, input.email, user, requestId);
    throw fail(ErrorCode.INVALID_CREDENTIALS, 'The e-mail or password is wrong');
  }
  const upgraded = await upgradedHash(input.password, user.passwordHash);
  if (upgraded) await user.update({ passwordHash: upgraded });
  await auditEvent(ctx.master, {
    actorUserId: user.id,
    action: 'auth.login.succeeded',
    targetType: 'user',
    targetId: user.id,
    requestId,
  });
  const stores = await listUserStores(ctx.master, user.id);
  return { user: toUserDto(user), token: platformToken(ctx, user, activeStoreId(stores, null)), stores };
}

async function findUser(ctx: AppContext, userId: string): Promise<PlatformUser> {
  const user = await ctx.master.models.User.findByPk(userId);
  // A valid token of a user that no longer exists.
  if (!user) throw fail(ErrorCode.NOT_FOUND, 'The account no longer exists');
  return user;
}

export async function me(ctx: AppContext, auth: PlatformClaims) {
  const user = await findUser(ctx, auth.sub);
  const stores = await listUserStores(ctx.master, user.id);
  return { user: toUserDto(user), stores, activeStoreId: activeStoreId(stores, auth.storeId) };
}

export async function logout(ctx: AppContext, auth: { sub: string; jti: string; exp: number }, requestId?: string) {
  await ctx.revocations.revoke(auth.jti, auth.sub, auth.exp, (t) =>
    audit(ctx.master, t, {
      actorUserId: auth.sub,
      action: 'auth.token.revoked',
      targetType: 'token',
      targetId: auth.jti,
      data: { reason: 'logout' },
      requestId,
    }),
  );
}

export async function updateProfile(ctx: AppContext, userId: string, input: ProfileInput) {
  const user = await findUser(ctx, userId);
  const changes: Partial<Pick<PlatformUser, 'name' | 'phone' | 'avatarUrl' | 'company'>> = {};
  if (input.name !== undefined) changes.name = input.name;
  if (input.phone !== undefined) changes.phone = input.phone;
  if (input.avatarUrl !== undefined) changes.avatarUrl = input.avatarUrl;
  if (input.company !== undefined) {
    const company: Record<string, string> = { ...user.company };
    for (const [key, value] of Object.entries(input.company)) {
      if (value === null) delete company[key];
      else if (value !== undefined) company[key] = value;
    }
    changes.company = company;
  }
  await user.update(changes);
  return { user: toUserDto(user) };
}

export async function switchStore(ctx: AppContext, userId: string, storeId: string) {
  const user = await findUser(ctx, userId);
  if (!(await memberRole(ctx.master, userId, storeId)))
    throw fail(ErrorCode.FORBIDDEN, 'You are not a member of this store');
  return { token: platformToken(ctx, user, storeId) };
}
