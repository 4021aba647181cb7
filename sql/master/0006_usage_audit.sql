-- Usage and the audit trail, readable by the people they concern.
--
-- api_usage_logs was a row per request that nothing ever wrote: requests are counted per store and UTC day in
-- Redis on the hot path (never a master-DB write per request) and the worker copies each day's absolute count
-- here, keeping the larger of the two, so a flush may be repeated or cut off without counting anything twice.
DROP TABLE api_usage_logs;
CREATE TABLE api_usage_logs (
  store_id   uuid NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  day        date NOT NULL,
  requests   bigint NOT NULL CHECK (requests >= 0),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (store_id, day)
);

-- The audit lists read newest first by (created_at, id), per store and across stores, optionally by action.
DROP INDEX audit_log_store_idx;
CREATE INDEX audit_log_store_idx ON audit_log (store_id, created_at DESC, id DESC);
CREATE INDEX audit_log_created_idx ON audit_log (created_at DESC, id DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, created_at DESC, id DESC);
