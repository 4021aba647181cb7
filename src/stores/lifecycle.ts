import type { AppContext } from '../app-context';
import type { StoreState } from '../db/connection-manager';
import { ErrorCode, fail, noSuchStore } from '../lib/errors';
import type { StoreStatus } from '../models/master';

/**
 * Why a store's storefront is not served, as the client sees it: gone → 404 STORE_NOT_FOUND, suspended →
 * 423 STORE_SUSPENDED, anything short of active with a ready database → 409 STORE_NOT_READY. The
 * ConnectionManager asks this before it opens anything.
 */
export function storefrontRefusal(store: StoreState | undefined): Error | undefined {
  if (!store || store.status === 'deleted') return noSuchStore();
  if (store.status === 'suspended') return fail(ErrorCode.STORE_SUSPENDED, 'This store is suspended');
  if (store.status !== 'active' || store.dbStatus !== 'ready' || !store.credentials) {
    return fail(ErrorCode.STORE_NOT_READY, 'This store has no ready database yet');
  }
  return undefined;
}

/**
 * Suspension is the platform's: while it lasts the owner may read the store but change nothing that
 * could lift it or act around it (423 STORE_SUSPENDED). Only a platform admin's resume ends it.
 */
export function refuseIfSuspended(store: { status: StoreStatus }): void {
  if (store.status === 'suspended')
    throw fail(
      ErrorCode.STORE_SUSPENDED,
      'This store is suspended by the platform; only a platform administrator can resume it',
    );
}

/** The status a store returns to when a deletion or suspension is lifted: wherever its database stands. */
export async function statusOfItsDatabase(ctx: AppContext, storeId: string): Promise<StoreStatus> {
  const db = await ctx.master.models.StoreDatabase.findByPk(storeId);
  if (!db) return 'pending_database';
  return db.status === 'ready' ? 'active' : db.status === 'failed' ? 'provisioning_failed' : 'provisioning';
}
