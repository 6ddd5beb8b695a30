"""Keel sinks."""

# Most records per store transaction, by store (`keel sink --batch` overrides it). A
# backlog is loaded in batches this size (a steady flow in whatever is queued). Larger
# PostgreSQL batches fold more of an order's life into one row (accepted and done in the
# same batch: one insert, no update): the server's CPU per event fell from ~3.3 us at 20k
# to ~2.5-2.8 at 40-60k (standard workload, write path alone, load ~10).
#
# chDB pays ~20 ms of CPU per insert whatever its size, and small parts cost merges after:
# depth blocks of 20k rows cost it 1.3-1.5 us a row (+0.4 in merges in the next second),
# 50k rows 0.7-0.8 (+0.03) (200k rows, Native inserts alone, /tmp probe, load 4-5). Over a
# 1M-row backlog, 50k-row blocks still cost chDB 1.5-1.7 us a row while loading (their
# parts merged meanwhile: 0.7-0.9 of it), 200k-row blocks 0.8 (five parts, no merge); the
# whole sink 5.5-6.2 -> 4.5-5.1 us a row (bench/sinks.py's load, load 8-12).
BATCH = {"postgres": 50_000, "clickhouse": 200_000}
