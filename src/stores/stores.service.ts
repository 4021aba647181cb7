import { Op, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { rethrowTaken } from '../db/errors';
import { ErrorCode, fail } from '../lib/errors';
import { secretContext } from '../lib/crypto';
import { logger } from '../lib/logger';
import { migrateComingBack } from '../migrations/migration-runner';
import type { MemberRole, StoreRow, StoreStatus } from '../models/master';
import { queueProvisioning } from '../provisioning/provisioning.service';
import { requestCreditSync } from '../queue/credit-sync-request';
import { statusOfItsDatabase } from './lifecycle';
import { listUserStores, requireStoreAccess } from './membership';
import { planLimitReached, planOf } from './plans';
import type { CreateStoreInput, ListStoresInput, StripeKeysInput } from './stores.schemas';

export const RESTORE_WINDOW_DAYS = 30;

async function toStoreDto(ctx: AppContext, store: StoreRow, role: MemberRole) {
  const [hostnames, db] = await Promise.all([
    ctx.master.models.StoreHostname.findAll({ where: { storeId: store.id }, order: [['hostname', 'ASC']] }),
    ctx.master.models.StoreDatabase.findByPk(store.id),
  ]);
  return {
    id: store.id,
    name: store.name,
    slug: store.slug,
    status: store.status,
    role,
    hostnames: hostnames.map((h) => h.hostname),
    database: db ? { mode: db.mode, status: db.status, schemaVersion: db.schemaVersion } : null,
    createdAt: store.createdAt.toISOString(),
  };
}

/**
 * Refuse one more live store for this owner beyond the plan's limit (PLAN_LIMIT_REACHED). Locks the user's
 * row for the transaction, so that two creations (or restores) at once cannot both slip under the limit.
 */
async function requireRoomForStore(ctx: AppContext, userId: string, t: Transaction) {
  const { User, Store } = ctx.master.models;
  await User.findByPk(userId, { transaction: t, lock: t.LOCK.UPDATE, rejectOnEmpty: true });
  const plan = await planOf(ctx, userId, t);
  const owned = await Store.count({
    where: {
      ownerId: userId,
      status: ['pending_database', 'provisioning', 'active', 'provisioning_failed', 'suspended'],
    },
    transaction: t,
  });
  if (owned >= plan.maxStores) {
    throw planLimitReached(
      'stores',
      plan.maxStores,
      owned,
      `The ${plan.name} plan allows ${plan.maxStores} store(s); upgrade to add more`,
    );
  }
}

const SLUG_IN_USE = 'Another store already uses this slug';

export async function createStore(ctx: AppContext, userId: string, input: CreateStoreInput) {
  const { User, Store, StoreMember, CreditBalance } = ctx.master.models;
  const store = await ctx.master.sequelize
    .transaction(async (t) => {
      // A taken slug is answered before the plan limit: upgrading would not free it. Under the owner's lock
      // (requireRoomForStore takes it again), so that of one owner's creations at once the later one sees
      // the earlier one's slug; between owners the unique index decides. A deleted store keeps its slug.
      await User.findByPk(userId, { transaction: t, lock: t.LOCK.UPDATE, rejectOnEmpty: true });
      if (await Store.findOne({ where: { slug: input.slug }, attributes: ['id'], transaction: t }))
        throw fail(ErrorCode.SLUG_TAKEN, SLUG_IN_USE);
      await requireRoomForStore(ctx, userId, t);
      const s = await Store.create({ name: input.name, slug: input.slug, ownerId: userId }, { transaction: t });
      await StoreMember.create({ storeId: s.id, userId, role: 'owner' }, { transaction: t });
      await CreditBalance.create({ storeId: s.id }, { transaction: t });
      await audit(ctx.master, t, {
        actorUserId: userId,
        storeId: s.id,
        action: 'store.created',
        targetType: 'store',
        targetId: s.id,
      });
      return s;
    })
    .catch(rethrowTaken(SLUG_IN_USE));
  return toStoreDto(ctx, store, 'owner');
}

export async function listStores(ctx: AppContext, userId: string, query: ListStoresInput) {
  if (query.status === 'deleted') return { items: await listRestorableStores(ctx, userId) };
  return { items: await listUserStores(ctx.master, userId) };
}

/** The owner's deleted stores that POST /api/stores/:id/restore can still bring back, latest deletion first. */
async function listRestorableStores(ctx: AppContext, userId: string) {
  const windowMs = RESTORE_WINDOW_DAYS * 86400_000;
  const stores = await ctx.master.models.Store.findAll({
    where: { ownerId: userId, status: 'deleted', deletedAt: { [Op.gte]: new Date(Date.now() - windowMs) } },
    order: [
      ['deletedAt', 'DESC'],
      ['id', 'ASC'],
    ],
  });
  return stores.map((s) => ({
    id: s.id,
    name: s.name,
    slug: s.slug,
    status: s.status,
    role: 'owner' as const,
    deletedAt: s.deletedAt!.toISOString(),
    restorableUntil: new Date(s.deletedAt!.getTime() + windowMs).toISOString(),
  }));
}

export async function getStore(ctx: AppContext, userId: string, storeId: string) {
  const { store, role } = await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin', 'staff']);
  return toStoreDto(ctx, store, role);
}

export async function renameStore(ctx: AppContext, userId: string, storeId: string, name: string | undefined) {
  const { store, role } = await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], {
    notSuspended: true,
  });
  if (name !== undefined && name !== store.name) {
    await ctx.master.sequelize.transaction(async (t) => {
      await store.update({ name }, { transaction: t });
      await audit(ctx.master, t, {
        actorUserId: userId,
        storeId,
        action: 'store.renamed',
        targetType: 'store',
        targetId: storeId,
        data: { name },
      });
    });
    if (store.status === 'active') await renameInTenant(ctx, storeId, name);
  }
  return toStoreDto(ctx, store, role);
}

/**
 * The tenant DB keeps its own copy of the name for /api/store/info. The master is the record: if the
 * tenant DB is down the rename still stands, and the copy is written on the next rename.
 */
async function renameInTenant(ctx: AppContext, storeId: string, name: string) {
  try {
    const handle = await ctx.tenants.forStore(storeId);
    await ctx.tenants.guard(handle, (handle) =>
      handle.query('UPDATE stores SET name = $1, updated_at = now() WHERE id = $2', [name, storeId]),
    );
  } catch (err) {
    logger.warn(
      { storeId, err: (err as Error).message },
      "store renamed in the master; its database's copy of the name is stale",
    );
  }
}

/** Soft delete: the store stops answering at once; it can be restored for 30 days, its database kept until then. */
export async function deleteStore(ctx: AppContext, userId: string, storeId: string) {
  const { store } = await requireStoreAccess(ctx.master, storeId, userId, ['owner'], { notSuspended: true });
  await ctx.master.sequelize.transaction(async (t) => {
    // suspended_at is left as it is: a suspension made meanwhile outlives the deletion (see restoreStore).
    await store.update({ status: 'deleted', deletedAt: new Date() }, { transaction: t });
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.deleted',
      targetType: 'store',
      targetId: storeId,
    });
  });
  await ctx.tenants.invalidate(storeId);
  return {
    id: storeId,
    status: 'deleted' as const,
    restorableUntil: new Date(store.deletedAt!.getTime() + RESTORE_WINDOW_DAYS * 86400_000).toISOString(),
  };
}

export async function restoreStore(ctx: AppContext, userId: string, storeId: string) {
  const { store, role } = await requireStoreAccess(ctx.master, storeId, userId, ['owner'], {
    allowDeleted: true,
    notSuspended: true,
  });
  if (store.status !== 'deleted') throw fail(ErrorCode.CONFLICT, 'This store is not deleted');
  if (Date.now() - store.deletedAt!.getTime() > RESTORE_WINDOW_DAYS * 86400_000) {
    throw fail(ErrorCode.CONFLICT, `Stores can be restored for ${RESTORE_WINDOW_DAYS} days after deletion`);
  }
  const dbStatus = await statusOfItsDatabase(ctx, storeId);
  // A deleted store does not count against the plan: bringing it back must fit under the limit again.
  const status = await ctx.master.sequelize.transaction(async (t) => {
    await requireRoomForStore(ctx, store.ownerId, t);
    // Read again under the lock: a platform suspension (suspended_at) made before or during the deletion stands.
    await store.reload({ transaction: t, lock: t.LOCK.UPDATE });
    if (store.status !== 'deleted') throw fail(ErrorCode.CONFLICT, 'This store is not deleted');
    const restored: StoreStatus = store.suspendedAt ? 'suspended' : dbStatus;
    await store.update({ status: restored, deletedAt: null }, { transaction: t });
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.restored',
      targetType: 'store',
      targetId: storeId,
    });
    return restored;
  });
  await resumeBackgroundWork(ctx, storeId, status);
  // Fleet runs pass deleted stores by: it catches up before its first request.
  if (status === 'active') await migrateComingBack(ctx, storeId);
  await ctx.tenants.invalidate(storeId);
  return toStoreDto(ctx, store, role);
}

/**
 * After a deletion or suspension is lifted: a provisioning job may have run (and done nothing) meanwhile, so
 * queue it again; credit changes made meanwhile (admin adjustments) reach the store's own copy.
 */
export async function resumeBackgroundWork(ctx: AppContext, storeId: string, status: StoreStatus): Promise<void> {
  if (status === 'provisioning') await queueProvisioning(ctx, storeId);
  if (status === 'active') await requestCreditSync(ctx, storeId);
}

export async function putStripeKeys(ctx: AppContext, userId: string, storeId: string, input: StripeKeysInput) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const publicConfig = {
    publishableKey: input.publishableKey,
    secretKeyLast4: input.secretKey.slice(-4),
    hasWebhookSecret: !!input.webhookSecret,
  };
  const secrets = ctx.encryptor.encryptJson(
    { secretKey: input.secretKey, webhookSecret: input.webhookSecret ?? null },
    secretContext.storeIntegration(storeId, 'stripe'),
  );
  const configuredAt = new Date();
  await ctx.master.sequelize.transaction(async (t) => {
    await ctx.master.models.StoreIntegration.upsert(
      { storeId, provider: 'stripe', publicConfig, secrets, configuredAt },
      { transaction: t },
    );
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.integration.stripe.configured',
      targetType: 'integration',
      targetId: 'stripe',
    });
  });
  return {
    publishableKey: input.publishableKey,
    secretKeyLast4: publicConfig.secretKeyLast4,
    configuredAt: configuredAt.toISOString(),
  };
}
