import { QueryTypes } from 'sequelize';
import type { MasterDb } from '../db/master';
import type { MemberRole, StoreStatus } from '../models/master';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import { refuseIfSuspended } from './lifecycle';

export interface StoreSummary {
  id: string;
  name: string;
  slug: string;
  status: StoreStatus;
  role: MemberRole;
}

/** The stores a platform user belongs to (not deleted ones), oldest first — the admin's store dropdown. */
export async function listUserStores(master: MasterDb, userId: string): Promise<StoreSummary[]> {
  return master.sequelize.query<StoreSummary>(
    `SELECT s.id, s.name, s.slug, s.status, m.role
       FROM store_members m JOIN stores s ON s.id = m.store_id
      WHERE m.user_id = $1::uuid AND s.status <> 'deleted'
      ORDER BY s.created_at, s.id`,
    { bind: [userId], type: QueryTypes.SELECT },
  );
}

/** The caller's role in a store, or null when not a member (or the store is deleted). */
export async function memberRole(master: MasterDb, userId: string, storeId: string): Promise<MemberRole | null> {
  const rows = await master.sequelize.query<{ role: MemberRole }>(
    `SELECT m.role FROM store_members m JOIN stores s ON s.id = m.store_id
      WHERE m.user_id = $1::uuid AND m.store_id = $2::uuid AND s.status <> 'deleted'`,
    { bind: [userId, storeId], type: QueryTypes.SELECT },
  );
  return rows[0]?.role ?? null;
}

/**
 * The store the onboarding wizard and `me` work on: the token's store while the user is still a member,
 * else the user's most recently created store.
 */
export function activeStoreId(stores: StoreSummary[], tokenStoreId: string | null): string | null {
  if (tokenStoreId && stores.some((s) => s.id === tokenStoreId)) return tokenStoreId;
  return stores.length ? stores[stores.length - 1].id : null;
}

/**
 * The store a platform route acts on, after checking the caller may: missing (or deleted, unless
 * `allowDeleted`) → 404 STORE_NOT_FOUND; not a member, or a role not in `roles` → 403; suspended while
 * `notSuspended` (every route that changes the store) → 423 STORE_SUSPENDED.
 */
export async function requireStoreAccess(
  master: MasterDb,
  storeId: string,
  userId: string,
  roles: MemberRole[],
  opts: { allowDeleted?: boolean; notSuspended?: boolean } = {},
) {
  const store = await master.models.Store.findByPk(storeId);
  if (!store || (store.status === 'deleted' && !opts.allowDeleted)) throw noSuchStore();
  const member = await master.models.StoreMember.findOne({ where: { storeId, userId } });
  if (!member) throw fail(ErrorCode.FORBIDDEN, 'You are not a member of this store');
  if (!roles.includes(member.role))
    throw fail(ErrorCode.FORBIDDEN, `This needs one of these store roles: ${roles.join(', ')}`);
  // After the membership checks: an outsider learns nothing about the store's state.
  if (opts.notSuspended) refuseIfSuspended(store);
  return { store, role: member.role };
}
