-- Moves of a store's managed database to another tenant server (src/moves). The queue job only drives a move
-- from its row, so a worker that dies mid-move leaves a row saying what exists where: the next attempt undoes
-- the half-made target and starts again, or the move fails cleanly; the store is never half switched.

-- A drain: every active managed store of one server moved to the others, `per_server` at a time.
CREATE TABLE store_drains (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  server       text NOT NULL,
  per_server   integer NOT NULL CHECK (per_server BETWEEN 1 AND 16),
  state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'completed', 'failed')),
  -- A platform user id, or `cli:<user>@<host>` for the command line.
  requested_by text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  updated_at   timestamptz NOT NULL DEFAULT now()
);
-- One drain of a server at a time.
CREATE UNIQUE INDEX store_drains_one_active ON store_drains (server) WHERE state = 'running';

CREATE TABLE store_moves (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  store_id         uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  drain_id         uuid REFERENCES store_drains (id) ON DELETE SET NULL,
  state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'copying', 'catching_up', 'switching', 'completed', 'failed')),
  source_server    text NOT NULL,
  source_database  text NOT NULL,
  target_server    text NOT NULL,
  -- Named before it is created, so no target database exists without a row naming it.
  target_database  text,
  role             text,
  rows_copied      bigint,
  changes_replayed bigint,
  -- From holding the store's requests to releasing them (the final catch-up and the switch).
  write_pause_ms   integer,
  attempts         integer NOT NULL DEFAULT 0,
  -- When its job was queued (a drain queues its moves `per_server` at a time; NULL: waiting for its turn).
  dispatched_at    timestamptz,
  error            text,
  requested_by     text NOT NULL,
  requested_by_user uuid REFERENCES users (id) ON DELETE SET NULL,
  -- The source database is kept (closed to connections) until then, then dropped by maintenance.
  drop_after       timestamptz,
  dropped_at       timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  updated_at       timestamptz NOT NULL DEFAULT now()
);
-- One active move per store: the index decides between two requests at once.
CREATE UNIQUE INDEX store_moves_one_active ON store_moves (store_id)
  WHERE state IN ('queued', 'copying', 'catching_up', 'switching');
CREATE INDEX store_moves_store_idx ON store_moves (store_id, created_at DESC);
CREATE INDEX store_moves_drain_idx ON store_moves (drain_id, state) WHERE drain_id IS NOT NULL;
CREATE INDEX store_moves_drop_idx ON store_moves (drop_after) WHERE state = 'completed' AND dropped_at IS NULL;
