-- A hostname routes to a store only once proven. Every store gets <slug>.<STORE_DOMAIN> from the platform
-- (kind 'platform', verified when issued); a custom domain is claimed 'pending' with a random token and
-- becomes 'verified' when the DNS TXT record _tenantry-challenge.<hostname> holds that token. Several stores
-- may claim one name while pending (a claim blocks nobody); only one may hold it verified.

ALTER TABLE store_hostnames DROP CONSTRAINT store_hostnames_pkey;
ALTER TABLE store_hostnames
  ADD COLUMN kind text NOT NULL DEFAULT 'custom' CHECK (kind IN ('platform', 'custom')),
  -- Names added before this migration were never proven: they stop routing until verified.
  ADD COLUMN status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'verified')),
  ADD COLUMN verification_token text,
  ADD COLUMN verified_at timestamptz;
UPDATE store_hostnames SET verification_token = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
ALTER TABLE store_hostnames
  ADD PRIMARY KEY (store_id, hostname),
  ADD CONSTRAINT store_hostnames_verified_at CHECK ((status = 'verified') = (verified_at IS NOT NULL)),
  ADD CONSTRAINT store_hostnames_token CHECK (status = 'verified' OR verification_token IS NOT NULL),
  ADD CONSTRAINT store_hostnames_platform_verified CHECK (kind = 'custom' OR status = 'verified');
CREATE UNIQUE INDEX store_hostnames_verified_key ON store_hostnames (hostname) WHERE status = 'verified';
CREATE INDEX store_hostnames_hostname_idx ON store_hostnames (hostname);
DROP INDEX store_hostnames_store_idx;

-- Custom hostnames a store may claim (pending and verified together); NULL: the platform's ceiling (20).
ALTER TABLE plans ADD COLUMN max_hostnames integer CHECK (max_hostnames >= 0);
UPDATE plans SET max_hostnames = CASE id WHEN 'free' THEN 2 WHEN 'pro' THEN 10 ELSE NULL END;
