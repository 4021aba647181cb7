-- Plans that can be changed and limits that hold.

-- The largest a store's own database may grow (pg_database_size, sampled by a maintenance job); NULL: no limit.
ALTER TABLE plans ADD COLUMN max_storage_mb integer CHECK (max_storage_mb >= 0);
UPDATE plans SET max_storage_mb = CASE id WHEN 'free' THEN 250 WHEN 'pro' THEN 10240 ELSE NULL END;

-- Who bills a subscription, and the provider's own id of it (Stripe's `sub_…`), by which its webhooks find it.
-- A plan is paid for one period at a time; included credits are granted once per (user, period start).
-- `last_event_at`: the creation time of the newest provider event applied, so an older one arriving late
-- cannot undo a newer state.
ALTER TABLE subscriptions
  ADD COLUMN provider text NOT NULL DEFAULT 'manual' CHECK (provider IN ('manual', 'stripe')),
  ADD COLUMN provider_ref text,
  ADD COLUMN current_period_start timestamptz,
  ADD COLUMN last_event_at timestamptz;
CREATE UNIQUE INDEX subscriptions_provider_ref ON subscriptions (provider, provider_ref) WHERE provider_ref IS NOT NULL;

-- A change of plan asked for and waiting for the payment provider (POST /api/subscription with Stripe): the
-- client's checkout carries `reference` in the Stripe subscription's metadata (`tenantry_reference`), and the
-- signed webhook that confirms it applies the plan. A newer request of the same user supersedes a pending one.
CREATE TABLE subscription_requests (
  reference  text PRIMARY KEY CHECK (length(reference) BETWEEN 8 AND 100),
  user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  plan_id    text NOT NULL REFERENCES plans (id),
  status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'superseded')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX subscription_requests_one_pending ON subscription_requests (user_id) WHERE status = 'pending';

-- Included credits of a billing period, granted once: the row is written in the transaction that credits the
-- ledger. An upgrade within the period tops the grant up to the new plan's amount (`credits` = granted so far).
CREATE TABLE plan_credit_grants (
  user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  period_start timestamptz NOT NULL,
  store_id     uuid REFERENCES stores (id) ON DELETE SET NULL,
  credits      integer NOT NULL CHECK (credits >= 0),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, period_start)
);

-- Stripe events already acted on (subscription events): a second delivery finds its id here and changes nothing.
CREATE TABLE stripe_events (
  id          text PRIMARY KEY,
  type        text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);

-- The size of a store's own database as last sampled (bytes), and when: writes of a store over its plan's
-- max_storage_mb are refused until it shrinks or the plan grows.
ALTER TABLE stores
  ADD COLUMN storage_bytes bigint CHECK (storage_bytes >= 0),
  ADD COLUMN storage_sampled_at timestamptz;
