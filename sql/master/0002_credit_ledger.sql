-- Every completed credit change gets the next number of its store's ledger (`seq`), assigned in the same
-- statement that moves the balance, under that balance row's lock. The numbers are therefore dense (1, 2, 3 …
-- with no gaps: a rolled-back change gives its number back) and follow commit order, so a copy of the ledger
-- (the tenant DB's credit_spending_log) that holds n rows knows it is missing exactly the rows after n.

ALTER TABLE credit_balances ADD COLUMN seq bigint NOT NULL DEFAULT 0 CHECK (seq >= 0);
ALTER TABLE credit_transactions ADD COLUMN seq bigint CHECK (seq > 0);

-- Number what is already there (oldest first), and give every store with completed rows a balance row.
WITH numbered AS (
  SELECT id, row_number() OVER (PARTITION BY store_id ORDER BY created_at, id) AS n
    FROM credit_transactions WHERE status = 'completed'
)
UPDATE credit_transactions t SET seq = numbered.n FROM numbered WHERE numbered.id = t.id;
INSERT INTO credit_balances (store_id, balance, seq)
  SELECT store_id, 0, max(seq) FROM credit_transactions WHERE seq IS NOT NULL GROUP BY store_id
  ON CONFLICT (store_id) DO UPDATE SET seq = EXCLUDED.seq;

ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_seq_when_completed CHECK ((status = 'completed') = (seq IS NOT NULL));
CREATE UNIQUE INDEX credit_transactions_store_seq ON credit_transactions (store_id, seq) WHERE seq IS NOT NULL;
-- The Stripe webhook finds a pending purchase from its billing row; billing rows are found by purchase too.
CREATE INDEX billing_transactions_credit_tx_idx ON billing_transactions (credit_transaction_id);

-- How far each store's copy in its own database is known to reach (written by the credit-sync job only),
-- so a sync copies just the rows after it instead of counting the copy. Kept apart from credit_balances so
-- the sync never waits on (or holds) the balance row that every spend locks.
CREATE TABLE credit_sync_state (
  store_id   uuid PRIMARY KEY REFERENCES stores (id) ON DELETE CASCADE,
  synced_seq bigint NOT NULL DEFAULT 0 CHECK (synced_seq >= 0),
  synced_at  timestamptz NOT NULL DEFAULT now()
);
