"""Keel sinks."""

# Most records per store transaction, by store (`keel sink --batch` overrides it). A
# backlog is loaded in batches this size (a steady flow in whatever is queued). Larger
# PostgreSQL batches fold more of an order's life into one row (accepted and done in the
# same batch: one insert, no update): the server's CPU per event fell from ~3.3 us at 20k
# to ~2.5-2.8 at 40-60k (standard workload, write path alone, load ~10).
BATCH = {"postgres": 50_000, "clickhouse": 20_000}
