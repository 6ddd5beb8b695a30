-- Ledger entries as the PostgreSQL sink loads them from keel.settlements (sinks/ledger.py).
-- One engine event can settle the same user twice (a self-match: two orders, both TRADE)
-- and one user twice per event for different reasons, so (pair, seq, user_id, asset) was
-- not a key. The natural key of an entry is its settlement's (user_id, pair, seq, reason,
-- order_id) plus the asset; order_id is NULL for FEE settlements, and two NULLs must
-- collide for a redelivered FEE entry to be dropped, hence NULLS NOT DISTINCT
-- (PostgreSQL 15 or later). The columns are deltas, named as in the settlement record.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries RENAME COLUMN available TO available_delta;
ALTER TABLE ledger_entries RENAME COLUMN held TO held_delta;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_key
    UNIQUE NULLS NOT DISTINCT (user_id, pair, seq, reason, order_id, asset);
-- An event's settlements across users (reconciling a trade's legs and its fee).
CREATE INDEX ledger_entries_event ON ledger_entries (pair, seq);
