-- Fleet hygiene (src/hygiene/drift.ts, reconcile.ts): drift checks kept like migration runs, so a check cut
-- off half-way (a restarted process, a killed command) is resumed from its rows instead of starting over, and
-- the latest reconcile report, which /metrics reads on every instance.

CREATE TABLE drift_checks (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- The newest tenant migration of the code that made the check: what every store is compared with.
  target_version integer NOT NULL CHECK (target_version >= 0),
  state          text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'completed')),
  -- A platform user id, `cli:<user>@<host>` for the command line.
  requested_by   text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  finished_at    timestamptz
);
CREATE INDEX drift_checks_created_idx ON drift_checks (created_at DESC, id DESC);

CREATE TABLE drift_check_stores (
  check_id    uuid NOT NULL REFERENCES drift_checks (id) ON DELETE CASCADE,
  store_id    uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  -- host:port of its tenant server, or `external`: the unit of the per-server bound.
  server      text NOT NULL,
  state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
  -- [{ kind, detail }]: empty when the store's database is as the code expects.
  findings    jsonb,
  -- md5 of the store's catalogue facts (see drift.ts).
  fingerprint text,
  ms          integer,
  checked_at  timestamptz,
  PRIMARY KEY (check_id, store_id)
);
CREATE INDEX drift_check_stores_pending_idx ON drift_check_stores (check_id, server) WHERE state = 'pending';

CREATE TABLE reconcile_reports (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  applied      boolean NOT NULL,
  requested_by text NOT NULL,
  -- Findings by kind (orphaned databases, missing databases …), for /metrics.
  counts       jsonb NOT NULL,
  report       jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_reports_created_idx ON reconcile_reports (created_at DESC, id DESC);
