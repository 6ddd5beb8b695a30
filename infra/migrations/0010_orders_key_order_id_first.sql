-- The orders' primary key leads with order_id: (order_id, pair) instead of (pair, order_id).
-- Same key, same uniqueness (ON CONFLICT (pair, order_id) infers it: column order does not
-- matter there), but every comparison while inserting or probing is settled by a bigint
-- before the pair's text is looked at; with the pair first, nearly every comparison was a
-- text comparison of equal strings (collation lookup, memcmp) before the bigint decided.
-- The sink COPYs ~140k orders per 278k engine events (bench/sinks.py); its PostgreSQL
-- backends' CPU per event fell 5-12% (write path alone, alternated runs). No read
-- needs the pair first: the sink's UPDATE probes (pair, order_id) equalities, and
-- docs/analytics.md reads orders by user (orders_user).
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD CONSTRAINT orders_pkey PRIMARY KEY (order_id, pair);
