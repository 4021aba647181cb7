-- Per-store logical backups (src/backups): one row per archive, kept in the backup storage (BACKUP_DIR) under
-- `storage_key`; `manifest` (tables, row counts, checksums) is also inside the encrypted archive.
CREATE TABLE store_backups (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  store_id       uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  state          text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'completed', 'failed')),
  trigger        text NOT NULL CHECK (trigger IN ('manual', 'schedule')),
  requested_by   uuid REFERENCES users (id) ON DELETE SET NULL,
  schema_version integer,
  bytes          bigint,
  storage_key    text,
  key_id         text,
  manifest       jsonb,
  error          text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  completed_at   timestamptz,
  expires_at     timestamptz NOT NULL
);
CREATE INDEX store_backups_store_idx ON store_backups (store_id, created_at DESC);
CREATE INDEX store_backups_expires_idx ON store_backups (expires_at);

-- A restore: the new database is filled and verified, then the store switched to it in one transaction; the
-- database it replaced is kept until `drop_after` (the backup retention), then dropped by maintenance.
CREATE TABLE store_restores (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  store_id          uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  backup_id         uuid REFERENCES store_backups (id) ON DELETE SET NULL,
  state             text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'completed', 'failed')),
  requested_by      uuid REFERENCES users (id) ON DELETE SET NULL,
  server            text,
  new_database      text,
  new_role          text,
  replaced_database text,
  replaced_role     text,
  drop_after        timestamptz,
  dropped_at        timestamptz,
  error             text,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX store_restores_store_idx ON store_restores (store_id, created_at DESC);

-- How long a plan's backups are kept (days); NULL: BACKUP_RETENTION_DAYS.
ALTER TABLE plans ADD COLUMN backup_retention_days integer CHECK (backup_retention_days > 0);
UPDATE plans SET backup_retention_days = CASE id WHEN 'free' THEN 7 WHEN 'pro' THEN 30 ELSE NULL END;
