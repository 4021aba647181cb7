-- Store database passwords rotate (src/hygiene/store-passwords.ts).
--
-- A rotation first stores the new connection settings here (an AES-256-GCM ciphertext, bound like `credentials`
-- to the store's credentials), then sets the password on the tenant server, then moves it to `credentials`: a
-- crash between the steps leaves the password to finish in this column, and the next rotation of the store (the
-- command again, or the scheduled task, which takes such stores first) uses it instead of making another.
ALTER TABLE store_databases
  ADD COLUMN pending_credentials    text,
  ADD COLUMN credentials_rotated_at timestamptz;

-- The scheduled task looks for the managed stores whose password is oldest, and for unfinished rotations.
CREATE INDEX store_databases_rotation_idx ON store_databases ((coalesce(credentials_rotated_at, created_at)))
  WHERE mode = 'managed';
CREATE INDEX store_databases_pending_idx ON store_databases (store_id) WHERE pending_credentials IS NOT NULL;
