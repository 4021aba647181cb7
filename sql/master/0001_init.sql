-- The master database: platform accounts, the store registry and everything billed.

CREATE TABLE users (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
  password_hash text NOT NULL,
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'platform_admin')),
  phone         text CHECK (length(phone) <= 40),
  avatar_url    text CHECK (length(avatar_url) <= 2048),
  company       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(company) = 'object'),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE plans (
  id                  text PRIMARY KEY,
  name                text NOT NULL,
  max_stores          integer NOT NULL CHECK (max_stores >= 0),
  max_products        integer CHECK (max_products >= 0),
  max_staff           integer CHECK (max_staff >= 0),
  monthly_price_cents integer NOT NULL DEFAULT 0 CHECK (monthly_price_cents >= 0),
  included_credits    integer NOT NULL DEFAULT 0 CHECK (included_credits >= 0),
  created_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO plans (id, name, max_stores, max_products, max_staff, monthly_price_cents, included_credits) VALUES
  ('free',   'Free',     1,   100,  2,     0,    0),
  ('pro',    'Pro',      5, 10000, 20,  4900, 1000),
  ('agency', 'Agency', 100,  NULL, NULL, 19900, 5000);

-- A user without a subscription is on the free plan.
CREATE TABLE subscriptions (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  plan_id            text NOT NULL REFERENCES plans (id),
  status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'past_due', 'canceled')),
  current_period_end timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX subscriptions_one_live_per_user ON subscriptions (user_id) WHERE status <> 'canceled';

CREATE TABLE stores (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  slug         text NOT NULL CHECK (slug ~ '^[a-z0-9-]{3,63}$'),
  status       text NOT NULL DEFAULT 'pending_database' CHECK (status IN
                 ('pending_database', 'provisioning', 'active', 'provisioning_failed', 'suspended', 'deleted')),
  owner_id     uuid NOT NULL REFERENCES users (id),
  -- onboarding wizard steps the owner chose to skip
  onboarding_skipped text[] NOT NULL DEFAULT '{}' CHECK (onboarding_skipped <@ ARRAY['payments', 'credits']),
  suspended_at timestamptz,
  deleted_at   timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE UNIQUE INDEX stores_slug_key ON stores (slug);
CREATE INDEX stores_owner_idx ON stores (owner_id, created_at);

CREATE TABLE store_members (
  store_id   uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role       text NOT NULL CHECK (role IN ('owner', 'admin', 'staff')),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (store_id, user_id)
);
CREATE UNIQUE INDEX store_members_one_owner ON store_members (store_id) WHERE role = 'owner';
CREATE INDEX store_members_user_idx ON store_members (user_id);

-- Where a store's own database lives. `credentials` is an AES-256-GCM ciphertext (see src/lib/crypto.ts).
CREATE TABLE store_databases (
  store_id       uuid PRIMARY KEY REFERENCES stores (id) ON DELETE CASCADE,
  mode           text NOT NULL CHECK (mode IN ('managed', 'external')),
  server         text,
  database_name  text,
  credentials    text NOT NULL,
  status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'provisioning', 'ready', 'failed')),
  schema_version integer NOT NULL DEFAULT 0 CHECK (schema_version >= 0),
  job_id         text,
  last_error     text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CHECK (mode = 'external' OR server IS NOT NULL)
);
CREATE INDEX store_databases_server_idx ON store_databases (server);

CREATE TABLE store_hostnames (
  hostname   text PRIMARY KEY CHECK (hostname = lower(hostname) AND length(hostname) <= 253),
  store_id   uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX store_hostnames_store_idx ON store_hostnames (store_id);

CREATE TABLE service_credit_costs (
  service       text PRIMARY KEY CHECK (service ~ '^[a-z0-9_.-]{1,64}$'),
  cost_per_unit integer NOT NULL CHECK (cost_per_unit > 0),
  description   text NOT NULL,
  active        boolean NOT NULL DEFAULT true
);
INSERT INTO service_credit_costs (service, cost_per_unit, description) VALUES
  ('email',            1, 'One transactional e-mail'),
  ('sms',              5, 'One text message'),
  ('ai_description',  10, 'One AI-written product description'),
  ('image_processing', 2, 'One product image resized and optimised'),
  ('export',          20, 'One catalogue or order export');

CREATE TABLE credit_balances (
  store_id   uuid PRIMARY KEY REFERENCES stores (id) ON DELETE CASCADE,
  balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_transactions (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  store_id        uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  type            text NOT NULL CHECK (type IN ('purchase', 'spend', 'refund', 'adjustment')),
  status          text NOT NULL DEFAULT 'completed' CHECK (status IN ('pending', 'completed', 'failed')),
  amount          bigint NOT NULL,
  balance_after   bigint CHECK (balance_after >= 0),
  service         text REFERENCES service_credit_costs (service),
  quantity        integer CHECK (quantity > 0),
  idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
  reason          text,
  created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  CHECK (status <> 'completed' OR balance_after IS NOT NULL),
  CHECK (type <> 'spend' OR (amount < 0 AND service IS NOT NULL)),
  CHECK (type <> 'purchase' OR amount > 0)
);
CREATE UNIQUE INDEX credit_transactions_idempotency ON credit_transactions (store_id, idempotency_key);
CREATE INDEX credit_transactions_store_idx ON credit_transactions (store_id, created_at DESC, id DESC);

CREATE TABLE billing_transactions (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  store_id              uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  user_id               uuid REFERENCES users (id) ON DELETE SET NULL,
  provider              text NOT NULL CHECK (provider IN ('manual', 'stripe')),
  provider_ref          text,
  amount_cents          integer NOT NULL CHECK (amount_cents >= 0),
  currency              char(3) NOT NULL DEFAULT 'EUR',
  status                text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
  credit_transaction_id uuid REFERENCES credit_transactions (id),
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX billing_transactions_provider_ref ON billing_transactions (provider, provider_ref);

CREATE TABLE usage_metrics (
  store_id uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  service  text NOT NULL REFERENCES service_credit_costs (service),
  day      date NOT NULL,
  quantity bigint NOT NULL DEFAULT 0 CHECK (quantity >= 0),
  credits  bigint NOT NULL DEFAULT 0 CHECK (credits >= 0),
  PRIMARY KEY (store_id, service, day)
);

CREATE TABLE api_usage_logs (
  id          bigserial PRIMARY KEY,
  store_id    uuid REFERENCES stores (id) ON DELETE SET NULL,
  user_id     uuid REFERENCES users (id) ON DELETE SET NULL,
  method      text NOT NULL,
  path        text NOT NULL,
  status      smallint NOT NULL,
  duration_ms integer NOT NULL CHECK (duration_ms >= 0),
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_usage_logs_store_idx ON api_usage_logs (store_id, created_at);

-- Third-party integrations of a store. `secrets` is an AES-256-GCM ciphertext; `public_config` holds
-- only what may be shown (publishable keys, the last four characters of secrets).
CREATE TABLE store_integrations (
  store_id      uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  provider      text NOT NULL CHECK (provider IN ('stripe')),
  public_config jsonb NOT NULL DEFAULT '{}'::jsonb,
  secrets       text NOT NULL,
  configured_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (store_id, provider)
);

-- Logged-out tokens, kept until they would have expired anyway.
CREATE TABLE revoked_tokens (
  jti        uuid PRIMARY KEY,
  user_id    uuid REFERENCES users (id) ON DELETE CASCADE,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);

CREATE TABLE audit_log (
  id            bigserial PRIMARY KEY,
  actor_user_id uuid REFERENCES users (id) ON DELETE SET NULL,
  store_id      uuid REFERENCES stores (id) ON DELETE SET NULL,
  action        text NOT NULL,
  target_type   text,
  target_id     text,
  data          jsonb NOT NULL DEFAULT '{}'::jsonb,
  request_id    text,
  created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_store_idx ON audit_log (store_id, created_at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_user_id, created_at);
