import { QueryTypes } from 'sequelize';
import type { AppContext } from '../app-context';
import { ErrorCode, fail } from '../lib/errors';
import type { PlatformClaims } from '../lib/jwt';
import { activeStoreId, listUserStores } from '../stores/membership';

export const STEPS = [
  { id: 'store', required: true },
  { id: 'database', required: true },
  { id: 'payments', required: false },
  { id: 'credits', required: false },
  { id: 'profile', required: true },
] as const;
export type StepId = (typeof STEPS)[number]['id'];

/** The wizard's state for the caller's active store (the token's store, else the newest one). */
export async function onboarding(ctx: AppContext, auth: PlatformClaims) {
  const [user, stores] = await Promise.all([
    ctx.master.models.User.findByPk(auth.sub, { rejectOnEmpty: true }),
    listUserStores(ctx.master, auth.sub),
  ]);
  const storeId = activeStoreId(stores, auth.storeId);
  const store = storeId ? await ctx.master.models.Store.findByPk(storeId) : null;
  const facts = storeId
    ? (
        await ctx.master.sequelize.query<{ payments: boolean; credits: boolean }>(
          `SELECT EXISTS (SELECT 1 FROM store_integrations WHERE store_id = $1::uuid AND provider = 'stripe') AS payments,
                  EXISTS (SELECT 1 FROM credit_transactions WHERE store_id = $1::uuid AND type = 'purchase' AND status = 'completed') AS credits`,
          { bind: [storeId], type: QueryTypes.SELECT },
        )
      )[0]
    : { payments: false, credits: false };
  const done: Record<StepId, boolean> = {
    store: !!store,
    database: store?.status === 'active',
    payments: facts.payments,
    credits: facts.credits,
    profile: !!user.phone && !!user.company?.name,
  };
  const skipped = new Set(store?.onboardingSkipped ?? []);
  const steps = STEPS.map((s) => ({
    id: s.id,
    required: s.required,
    done: done[s.id],
    skipped: !done[s.id] && skipped.has(s.id),
  }));
  return { complete: steps.every((s) => s.done || s.skipped), storeId, steps };
}

export async function skipStep(ctx: AppContext, auth: PlatformClaims, stepId: string) {
  const step = STEPS.find((s) => s.id === stepId);
  if (!step) throw fail(ErrorCode.NOT_FOUND, `No onboarding step "${stepId}"`);
  if (step.required) throw fail(ErrorCode.STEP_NOT_SKIPPABLE, `The ${step.id} step cannot be skipped`);
  const stores = await listUserStores(ctx.master, auth.sub);
  const storeId = activeStoreId(stores, auth.storeId);
  if (!storeId) throw fail(ErrorCode.CONFLICT, 'Create a store first: skipped steps belong to a store');
  await ctx.master.sequelize.query(
    `UPDATE stores SET onboarding_skipped = array_append(onboarding_skipped, $1::text), updated_at = now()
      WHERE id = $2::uuid AND NOT ($1::text = ANY(onboarding_skipped))`,
    { bind: [step.id, storeId] },
  );
  return onboarding(ctx, auth);
}
