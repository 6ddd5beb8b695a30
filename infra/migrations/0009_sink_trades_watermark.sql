-- The PostgreSQL sink writes a batch's trades (with its ledger entries and balances) and
-- its orders in two transactions side by side, on two connections (sinks/postgres.py),
-- each under a watermark of its own in sink_progress: the orders' keeps the rows
-- (sink, pair) it has, the trades' is (sink || ':trades', pair). One watermark covered
-- both until now, so every trades watermark starts where that one is: everything up to
-- it was stored, trades included. (A row the sink has written already is kept: it is
-- exact. A watermark that is behind is safe, a replayed trade then takes the sink's
-- ON CONFLICT path; one that is ahead would lose trades, and a copy cannot be.)
INSERT INTO sink_progress (sink, pair, last_seq, updated_at)
SELECT sink || ':trades', pair, last_seq, updated_at
  FROM sink_progress
 WHERE sink NOT LIKE '%:trades'
ON CONFLICT (sink, pair) DO NOTHING;
