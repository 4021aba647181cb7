-- Fleet migration runs, kept in the master DB: the queue job only drives a run from these rows, so a run
-- outlives the worker that drove it (another one resumes it from here) and tells which store is where.

CREATE TABLE migration_runs (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  target_version integer NOT NULL CHECK (target_version >= 0),
  -- { canary, perServer, maxFailures, stores } as asked (canary resolved into the rows' `canary` flag).
  options        jsonb NOT NULL DEFAULT '{}'::jsonb,
  state          text NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'canary', 'running', 'paused', 'stopped', 'completed', 'failed')),
  -- Why a run failed or was stopped (a canary failed, too many failures, an operator).
  reason         text,
  -- A platform user id, `cli:<user>@<host>` for the command line, `deploy` for a start-up run.
  requested_by   text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  started_at     timestamptz,
  finished_at    timestamptz,
  updated_at     timestamptz NOT NULL DEFAULT now()
);
-- One active run at a time: the index decides between two requests (or instances starting) at once.
CREATE UNIQUE INDEX migration_runs_one_active ON migration_runs ((true)) WHERE state IN ('queued', 'canary', 'running', 'paused');
CREATE INDEX migration_runs_created_idx ON migration_runs (created_at DESC, id DESC);

CREATE TABLE migration_run_stores (
  run_id       uuid NOT NULL REFERENCES migration_runs (id) ON DELETE CASCADE,
  store_id     uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  -- host:port of its tenant server, or `external`: the unit of the per-server bound.
  server       text NOT NULL,
  canary       boolean NOT NULL DEFAULT false,
  -- Order inside its server (oldest store first).
  position     integer NOT NULL,
  state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'migrated', 'skipped', 'failed')),
  from_version integer,
  to_version   integer,
  ms           integer,
  error        text,
  -- Times the store was claimed (a claim whose worker died is checked and claimed again).
  attempt      integer NOT NULL DEFAULT 0,
  -- The driver that claimed it (a job attempt), so that a driver re-checks only claims that are not its own.
  claimed_by   text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  started_at   timestamptz,
  finished_at  timestamptz,
  PRIMARY KEY (run_id, store_id)
);
CREATE INDEX migration_run_stores_state_idx ON migration_run_stores (run_id, state, server, position);
CREATE INDEX migration_run_stores_store_idx ON migration_run_stores (store_id);

-- The last migration error of a store's database (cleared by its next successful migration); its schema
-- version is store_databases.schema_version, kept by provisioning and by every migration.
ALTER TABLE store_databases ADD COLUMN migration_error text;
