import type { AppContext } from '../app-context';
import { auditEvent } from '../db/audit';
import { rethrowTaken } from '../db/errors';
import { currentStoreId, tenantDb } from '../db/tenant-context';
import { decodeCursor, olderThan, toPage, type Page } from '../http/pagination';
import { ErrorCode, fail, unauthenticated } from '../lib/errors';
import { logger } from '../lib/logger';
import type { StoreClaims } from '../lib/jwt';
import { burnPasswordCheck, hashPassword, upgradedHash, verifyPassword } from '../lib/passwords';
import { requireRoomInStore, type StoreLimits } from '../subscriptions/store-limits';
import type { StoreActor } from './store-access';
import type { CreateStaffInput, StoreLoginInput, StoreRegisterInput, StoreUser } from './store-users.schemas';

interface StoreUserRow {
  id: string;
  email: string;
  name: string;
  role: StoreUser['role'];
  passwordHash?: string;
  createdAt: Date | string;
}

const toStoreUser = (u: StoreUserRow): StoreUser => ({
  id: u.id,
  email: u.email,
  name: u.name,
  role: u.role,
  createdAt: new Date(u.createdAt).toISOString(),
});

function storeToken(ctx: AppContext, user: StoreUser): string {
  const claims: StoreClaims = { sub: user.id, typ: 'store', role: user.role, storeId: currentStoreId() };
  return ctx.tokens.sign(claims).token;
}

const emailTaken = rethrowTaken('This store already has a user with this e-mail');

async function createUser(
  input: { email: string; password: string; name: string; role: StoreUser['role'] },
  actor: StoreActor | null,
  limits?: StoreLimits,
): Promise<StoreUser> {
  const passwordHash = await hashPassword(input.password);
  return tenantDb
    .transaction(async (t, m) => {
      if (input.role !== 'customer' && limits) await requireRoomInStore(m.User.sequelize!, t, 'staff', limits);
      const user = await m.User.create(
        { email: input.email, passwordHash, name: input.name, role: input.role },
        { transaction: t },
      );
      if (input.role === 'customer') await m.Customer.create({ userId: user.id }, { transaction: t });
      await m.AuditLog.create(
        {
          actorId: actor?.id ?? user.id,
          actorType: actor?.kind ?? 'store_user',
          action: `user.created`,
          targetType: 'user',
          targetId: user.id,
          data: { role: input.role },
        },
        { transaction: t },
      );
      return toStoreUser(user);
    })
    .catch(emailTaken);
}

/** A shopper signs up: a `customer` of this store only. */
export async function registerCustomer(ctx: AppContext, input: StoreRegisterInput) {
  const user = await createUser({ ...input, role: 'customer' }, null);
  return { user, token: storeToken(ctx, user) };
}

export async function loginStoreUser(ctx: AppContext, input: StoreLoginInput) {
  const rows = await tenantDb.query<StoreUserRow>(
    'SELECT id, email, name, role, password_hash AS "passwordHash", created_at AS "createdAt" FROM users WHERE email = $1',
    [input.email],
  );
  const row = rows[0];
  if (!row) await burnPasswordCheck(input.password);
  if (!row || !(await verifyPassword(input.password, row.passwordHash!))) {
    throw fail(ErrorCode.INVALID_CREDENTIALS, 'The e-mail or password is wrong');
  }
  const upgraded = await upgradedHash(input.password, row.passwordHash!);
  // Conditional on the old hash, so a password changed meanwhile is not overwritten.
  if (upgraded)
    await tenantDb.query(
      'UPDATE users SET password_hash = $1, updated_at = now() WHERE id = $2 AND password_hash = $3',
      [upgraded, row.id, row.passwordHash],
    );
  const user = toStoreUser(row);
  return { user, token: storeToken(ctx, user) };
}

export async function storeMe(userId: string) {
  const rows = await tenantDb.query<StoreUserRow>(
    'SELECT id, email, name, role, created_at AS "createdAt" FROM users WHERE id = $1',
    [userId],
  );
  // The token outlived its user: as good as revoked.
  if (!rows[0]) throw unauthenticated('The account no longer exists');
  return { user: toStoreUser(rows[0]) };
}

/** Store tokens are revoked like platform ones; they belong to no platform account, hence no user id. */
export async function logoutStoreUser(ctx: AppContext, auth: { jti: string; exp: number }) {
  await ctx.revocations.revoke(auth.jti, null, auth.exp);
}

/**
 * Add an admin or staff member, within the plan's limit of staff per store. The role given is in the store's
 * audit trail (the master's, which its owner reads) as well as in the store database's own log: written after
 * the tenant's commit, as no transaction spans both databases.
 */
export async function createStaff(ctx: AppContext, input: CreateStaffInput, actor: StoreActor, limits: StoreLimits) {
  const user = await createUser(input, actor, limits);
  const storeId = currentStoreId();
  await auditEvent(ctx.master, {
    actorUserId: actor.kind === 'platform_user' ? actor.id : null,
    storeId,
    action: 'store.staff.added',
    targetType: 'store_user',
    targetId: user.id,
    data: { role: user.role, ...(actor.kind === 'store_user' ? { byStoreUser: actor.id } : {}) },
  }).catch((err: Error) => logger.warn({ storeId, err: err.message }, 'staff added but not in the master audit log'));
  return { user };
}

export async function listCustomers(opts: {
  limit: number;
  cursor?: string;
}): Promise<Page<StoreUser & { phone: string | null; marketingOptIn: boolean }>> {
  const after = decodeCursor(opts.cursor);
  const values: unknown[] = [opts.limit + 1];
  let where = `u.role = 'customer'`;
  if (after) where += ` AND ${olderThan('u', after, values)}`;
  const rows = await tenantDb.query<
    StoreUserRow & { cursorTs: string; phone: string | null; marketingOptIn: boolean | null }
  >(
    `SELECT u.id, u.email, u.name, u.role, u.created_at AS "createdAt", u.created_at::text AS "cursorTs",
            c.phone, c.marketing_opt_in AS "marketingOptIn"
       FROM users u LEFT JOIN customers c ON c.user_id = u.id
      WHERE ${where} ORDER BY u.created_at DESC, u.id DESC LIMIT $1`,
    values,
  );
  return toPage(rows, opts.limit, (r) => ({
    ...toStoreUser(r),
    phone: r.phone ?? null,
    marketingOptIn: r.marketingOptIn ?? false,
  }));
}

export async function storeInfo() {
  const rows = await tenantDb.query<{ id: string; name: string; slug: string; currency: string; timezone: string }>(
    'SELECT id, name, slug, currency, timezone FROM stores LIMIT 1',
  );
  if (!rows[0]) throw fail(ErrorCode.STORE_NOT_READY, "This store's database has no store profile yet");
  return rows[0];
}
