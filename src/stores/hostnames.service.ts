import { randomBytes } from 'node:crypto';
import { QueryTypes, type Transaction } from 'sequelize';
import type { AppContext } from '../app-context';
import { audit } from '../db/audit';
import { rethrowTaken } from '../db/errors';
import { ErrorCode, fail } from '../lib/errors';
import type { MasterModels } from '../models/master';
import { checkClaimableHostname, normaliseHostname, platformHostname } from './hostname-policy';
import { challengeName, type TxtResolver } from './hostname-verification';
import { requireStoreAccess } from './membership';
import { planLimitReached, planOf } from './plans';

/** Custom hostnames a store may hold when its plan sets no limit. */
export const HOSTNAME_CEILING = 20;

type HostnameRow = InstanceType<MasterModels['StoreHostname']>;

function toHostnameDto(h: HostnameRow) {
  return {
    hostname: h.hostname,
    kind: h.kind,
    status: h.status,
    verification:
      h.status === 'pending' && h.verificationToken
        ? { type: 'dns-txt' as const, name: challengeName(h.hostname), value: h.verificationToken }
        : null,
    verifiedAt: h.verifiedAt ? h.verifiedAt.toISOString() : null,
    createdAt: h.createdAt.toISOString(),
  };
}

const HOSTNAME_IN_USE = 'Another store already uses this hostname';
const taken = () => fail(ErrorCode.HOSTNAME_TAKEN, HOSTNAME_IN_USE);

export async function listHostnames(ctx: AppContext, userId: string, storeId: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin', 'staff']);
  const rows = await ctx.master.models.StoreHostname.findAll({ where: { storeId }, order: [['hostname', 'ASC']] });
  return { items: rows.map(toHostnameDto) };
}

/**
 * Claim a custom hostname: it is kept `pending` with a random token, and routes nothing until the owner
 * proves control of its DNS (verifyHostname). Claiming again answers with the same claim.
 */
export async function addHostname(ctx: AppContext, userId: string, storeId: string, requested: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const verdict = checkClaimableHostname(requested, ctx.config.hostnames);
  if (!verdict.ok) {
    if (verdict.reason === 'invalid')
      throw fail(ErrorCode.VALIDATION_FAILED, 'The request body is not valid', {
        errors: [{ path: 'hostname', message: verdict.detail }],
      });
    throw fail(ErrorCode.HOSTNAME_NOT_ALLOWED, `This hostname cannot be claimed: ${verdict.detail}`);
  }
  const hostname = verdict.hostname;
  const { StoreHostname, Store } = ctx.master.models;
  const row = await ctx.master.sequelize.transaction(async (t) => {
    // The store's row lock serialises this store's claims, so concurrent ones cannot pass the cap together.
    const store = await Store.findByPk(storeId, { transaction: t, lock: t.LOCK.UPDATE, rejectOnEmpty: true });
    const own = await StoreHostname.findOne({ where: { storeId, hostname }, transaction: t });
    if (own) return own;
    const holder = await StoreHostname.findOne({ where: { hostname, status: 'verified' }, transaction: t });
    if (holder) throw taken();
    await requireRoomForHostname(ctx, store.ownerId, storeId, t);
    const added = await StoreHostname.create(
      { storeId, hostname, kind: 'custom', status: 'pending', verificationToken: randomBytes(16).toString('hex') },
      { transaction: t },
    );
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.hostname.added',
      targetType: 'hostname',
      targetId: hostname,
    });
    return added;
  });
  return toHostnameDto(row);
}

async function requireRoomForHostname(ctx: AppContext, ownerId: string, storeId: string, t: Transaction) {
  const plan = await planOf(ctx, ownerId, t);
  const limit = plan.maxHostnames ?? HOSTNAME_CEILING;
  const count = await ctx.master.models.StoreHostname.count({ where: { storeId, kind: 'custom' }, transaction: t });
  if (count >= limit) {
    throw planLimitReached(
      'hostnames',
      limit,
      count,
      `The ${plan.name} plan allows ${limit} custom hostname(s) per store (this store has ${count}); remove one or upgrade`,
    );
  }
}

/**
 * Prove a pending hostname: the TXT record `_tenantry-challenge.<hostname>` must hold its token. Once
 * verified it routes to this store, and other stores' pending claims on it are dropped.
 */
export async function verifyHostname(
  ctx: AppContext,
  resolver: TxtResolver,
  userId: string,
  storeId: string,
  requested: string,
) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const hostname = normaliseHostname(requested);
  const { StoreHostname } = ctx.master.models;
  const claim = await StoreHostname.findOne({ where: { storeId, hostname } });
  if (!claim) throw fail(ErrorCode.NOT_FOUND, 'This store has no such hostname');
  if (claim.status === 'verified') return toHostnameDto(claim);
  const holder = await StoreHostname.findOne({ where: { hostname, status: 'verified' } });
  if (holder) throw taken();

  const lookup = await resolver.lookup(challengeName(hostname));
  if (!lookup.found || !lookup.values.includes(claim.verificationToken!)) {
    const found = lookup.found
      ? `found ${lookup.values.map((v) => JSON.stringify(v)).join(', ') || 'an empty record'}`
      : lookup.reason;
    throw fail(
      ErrorCode.HOSTNAME_NOT_VERIFIED,
      `The TXT record ${challengeName(hostname)} must hold "${claim.verificationToken}"; ${found}`,
    );
  }

  const verified = await ctx.master.sequelize
    .transaction(async (t) => {
      const [count] = await StoreHostname.update(
        { status: 'verified', verifiedAt: new Date() },
        { where: { storeId, hostname, status: 'pending' }, transaction: t },
      );
      // Removed meanwhile (or verified by a concurrent call): answer with what is there now.
      if (count === 0) return StoreHostname.findOne({ where: { storeId, hostname }, transaction: t });
      await ctx.master.sequelize.query(
        "DELETE FROM store_hostnames WHERE hostname = $1 AND store_id <> $2::uuid AND status = 'pending'",
        {
          bind: [hostname, storeId],
          type: QueryTypes.DELETE,
          transaction: t,
        },
      );
      await audit(ctx.master, t, {
        actorUserId: userId,
        storeId,
        action: 'store.hostname.verified',
        targetType: 'hostname',
        targetId: hostname,
      });
      return StoreHostname.findOne({ where: { storeId, hostname }, transaction: t });
    })
    // A verified name is one store's at most (a partial unique index): losing that race is HOSTNAME_TAKEN.
    .catch(rethrowTaken(HOSTNAME_IN_USE));
  if (!verified) throw fail(ErrorCode.NOT_FOUND, 'This store has no such hostname');
  // Other instances may remember this host as unknown.
  await ctx.tenants.hostnamesChanged([hostname]);
  return toHostnameDto(verified);
}

export async function removeHostname(ctx: AppContext, userId: string, storeId: string, requested: string) {
  await requireStoreAccess(ctx.master, storeId, userId, ['owner', 'admin'], { notSuspended: true });
  const hostname = normaliseHostname(requested);
  const { StoreHostname } = ctx.master.models;
  const row = await StoreHostname.findOne({ where: { storeId, hostname } });
  if (!row) throw fail(ErrorCode.NOT_FOUND, 'This store has no such hostname');
  if (row.kind === 'platform')
    throw fail(ErrorCode.HOSTNAME_NOT_ALLOWED, 'The hostname the platform issued to this store cannot be removed');
  await ctx.master.sequelize.transaction(async (t) => {
    await row.destroy({ transaction: t });
    await audit(ctx.master, t, {
      actorUserId: userId,
      storeId,
      action: 'store.hostname.removed',
      targetType: 'hostname',
      targetId: hostname,
    });
  });
  if (row.status === 'verified') await ctx.tenants.hostnamesChanged([hostname]);
}

/**
 * Give a store its `<slug>.<STORE_DOMAIN>` (verified: the platform owns that domain). Idempotent; run in
 * the transaction that makes the store active.
 */
export async function issuePlatformHostname(
  ctx: AppContext,
  store: { id: string; slug: string },
  t: Transaction,
): Promise<string> {
  const hostname = platformHostname(store.slug, ctx.config.hostnames);
  await ctx.master.sequelize.query(
    `INSERT INTO store_hostnames (store_id, hostname, kind, status, verified_at)
     VALUES ($1::uuid, $2, 'platform', 'verified', now())
     ON CONFLICT DO NOTHING`,
    { bind: [store.id, hostname], type: QueryTypes.INSERT, transaction: t },
  );
  return hostname;
}

/**
 * Stores made active before hostnames were issued (or under another STORE_DOMAIN) get theirs: run once at
 * server start. One statement; nothing to do costs one indexed scan.
 */
export async function issueMissingPlatformHostnames(ctx: AppContext): Promise<string[]> {
  const rows = await ctx.master.sequelize.query<{ hostname: string }>(
    `INSERT INTO store_hostnames (store_id, hostname, kind, status, verified_at)
     SELECT s.id, s.slug || '.' || $1::text, 'platform', 'verified', now()
       FROM stores s
      WHERE s.status IN ('active', 'suspended')
        AND NOT EXISTS (SELECT 1 FROM store_hostnames h WHERE h.store_id = s.id AND h.kind = 'platform' AND h.hostname = s.slug || '.' || $1::text)
     ON CONFLICT DO NOTHING
     RETURNING hostname`,
    { bind: [ctx.config.hostnames.storeDomain], type: QueryTypes.SELECT },
  );
  const issued = rows.map((r) => r.hostname);
  await ctx.tenants.hostnamesChanged(issued);
  return issued;
}
