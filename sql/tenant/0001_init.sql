-- One store's own database: the store, its people, catalogue, orders and plugin data.

CREATE TABLE stores (
  id         uuid PRIMARY KEY,
  name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  slug       text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9-]{3,63}$'),
  currency   char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
  timezone   text NOT NULL DEFAULT 'UTC',
  settings   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- A tenant database holds exactly one store.
CREATE UNIQUE INDEX stores_single_row ON stores ((true));

CREATE TABLE users (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email            text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
  password_hash    text NOT NULL,
  name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  role             text NOT NULL CHECK (role IN ('admin', 'staff', 'customer')),
  -- the platform account this user mirrors (the store's owner), if any
  platform_user_id uuid UNIQUE,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE customers (
  user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  phone      text CHECK (length(phone) <= 40),
  address    jsonb NOT NULL DEFAULT '{}'::jsonb,
  marketing_opt_in boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  sku         text NOT NULL CHECK (length(sku) BETWEEN 1 AND 64),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
  price_cents integer NOT NULL CHECK (price_cents >= 0),
  currency    char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
  active      boolean NOT NULL DEFAULT true,
  deleted_at  timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX products_sku_key ON products (sku) WHERE deleted_at IS NULL;
-- the public catalogue is read newest first with keyset pagination
CREATE INDEX products_listing_idx ON products (created_at DESC, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE inventory (
  product_id uuid PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
  stock      integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  customer_id    uuid NOT NULL REFERENCES users (id),
  status         text NOT NULL DEFAULT 'placed' CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled', 'refunded')),
  currency       char(3) NOT NULL,
  subtotal_cents bigint NOT NULL CHECK (subtotal_cents >= 0),
  total_cents    bigint NOT NULL CHECK (total_cents >= 0),
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_listing_idx ON orders (created_at DESC, id DESC);

CREATE TABLE order_items (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
  product_id       uuid NOT NULL REFERENCES products (id),
  sku              text NOT NULL,
  name             text NOT NULL,
  quantity         integer NOT NULL CHECK (quantity > 0),
  unit_price_cents integer NOT NULL CHECK (unit_price_cents >= 0),
  line_total_cents bigint NOT NULL CHECK (line_total_cents = quantity * unit_price_cents),
  UNIQUE (order_id, product_id)
);

CREATE TABLE plugins (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name       text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
  version    text NOT NULL,
  enabled    boolean NOT NULL DEFAULT false,
  config     jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plugin_settings (
  plugin_id  uuid NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
  key        text NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
  value      jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (plugin_id, key)
);

CREATE TABLE plugin_data (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  plugin_id  uuid NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
  collection text NOT NULL CHECK (length(collection) BETWEEN 1 AND 128),
  data       jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plugin_data_collection_idx ON plugin_data (plugin_id, collection);

CREATE TABLE cron_jobs (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL UNIQUE,
  schedule    text NOT NULL,
  handler     text NOT NULL,
  plugin_id   uuid REFERENCES plugins (id) ON DELETE CASCADE,
  enabled     boolean NOT NULL DEFAULT true,
  last_run_at timestamptz,
  next_run_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cron_job_executions (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  cron_job_id uuid NOT NULL REFERENCES cron_jobs (id) ON DELETE CASCADE,
  status      text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
  started_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  error       text,
  CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX cron_job_executions_job_idx ON cron_job_executions (cron_job_id, started_at DESC);

-- A copy of the master's credit balance for the store's own screens; the master is the source of truth.
CREATE TABLE credit_balance_cache (
  id               boolean PRIMARY KEY DEFAULT true CHECK (id),
  balance          bigint NOT NULL CHECK (balance >= 0),
  last_transaction_at timestamptz,
  synced_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_spending_log (
  transaction_id uuid PRIMARY KEY,
  type           text NOT NULL CHECK (type IN ('purchase', 'spend', 'refund', 'adjustment')),
  service        text,
  quantity       integer,
  amount         bigint NOT NULL,
  balance_after  bigint NOT NULL,
  created_at     timestamptz NOT NULL
);
CREATE INDEX credit_spending_log_created_idx ON credit_spending_log (created_at DESC);

CREATE TABLE audit_log (
  id          bigserial PRIMARY KEY,
  actor_id    uuid,
  actor_type  text NOT NULL CHECK (actor_type IN ('store_user', 'platform_user', 'system')),
  action      text NOT NULL,
  target_type text,
  target_id   text,
  data        jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_created_idx ON audit_log (created_at);
