"""ClickHouse tables of the sink: depth snapshots, trades, and 1m/1h/1d candles.

The same DDL runs on embedded chDB and on a ClickHouse server. Money stays integer
(ticks, lots, notional units), as on the topics.

Exactly-once, and why candles stay exact:
- Every row carries its source position (`_partition`, `_offset`) and trades also the
  first offset of the insert block they came in (`_batch`). On start the sink resumes
  from the tables, not from Kafka's committed offsets: depth after max(_offset); trades
  at the start of their last block, which it inserts again.
- Every insert block has a deterministic insert_deduplication_token
  (table:partition:first offset:last offset) and every table keeps the hashes of its
  last 1000 blocks (non_replicated_deduplication_window; replicated tables have it by
  default). A repeated block is therefore dropped by the trades table ...
- ... and, with deduplicate_blocks_in_dependent_materialized_views = 1, still pushed
  through the candle views, each of which drops it if it already has it. This is the
  case that matters: a crash after the trades part was written but before a view's
  part was leaves that view short of one block; re-inserting the last block fills
  exactly that gap. A plain AggregatingMergeTree fed by a ReplacingMergeTree would
  double-count every retried block instead, since a view sees inserts, not the
  deduplicated table.
- An insert block never spans two partitions of a table (the sink cuts blocks at day /
  month boundaries), so each block is one part: all of it is there, or none of it.
- The trades table is also a ReplacingMergeTree on (pair, trade_id): even a duplicate
  that got past all of the above disappears from `trades FINAL`.
"""
from __future__ import annotations

DEDUP_WINDOW = 1000

INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}

DEPTH_COLUMNS = ("pair", "ts", "first_update_id", "last_update_id", "is_snapshot",
                 "bid_prices", "bid_qtys", "ask_prices", "ask_qtys", "_partition", "_offset")
TRADE_COLUMNS = ("pair", "trade_id", "seq", "ts", "price", "qty", "taker_side",
                 "maker_order_id", "maker_user_id", "taker_order_id", "taker_user_id",
                 "maker_fee", "taker_fee", "_partition", "_offset", "_batch")

CANDLE_INTERVALS = {"1m": "toStartOfMinute", "1h": "toStartOfHour", "1d": "toStartOfDay"}


def statements(depth_ttl_days: int = 30) -> list[str]:
    if depth_ttl_days < 1:
        raise ValueError("the depth TTL is at least one day")
    out = [f"""
CREATE TABLE IF NOT EXISTS depth (
    pair            LowCardinality(String),
    ts              DateTime64(3, 'UTC'),
    first_update_id UInt64,
    last_update_id  UInt64,
    is_snapshot     Bool,
    bid_prices      Array(Int64),    -- best (highest) first; ticks
    bid_qtys        Array(Int64),    -- lots; 0 = level removed (diffs)
    ask_prices      Array(Int64),    -- best (lowest) first
    ask_qtys        Array(Int64),
    _partition      UInt32,
    _offset         UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (pair, ts, last_update_id)
TTL toDateTime(ts) + INTERVAL {int(depth_ttl_days)} DAY
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}""", f"""
CREATE TABLE IF NOT EXISTS trades (
    pair            LowCardinality(String),
    trade_id        UInt64,
    seq             UInt64,
    ts              DateTime64(3, 'UTC'),
    price           Int64,
    qty             Int64,
    taker_side      UInt8,
    maker_order_id  UInt64,
    maker_user_id   UInt64,
    taker_order_id  UInt64,
    taker_user_id   UInt64,
    maker_fee       Int64,
    taker_fee       Int64,
    _partition      UInt32,
    _offset         UInt64,
    _batch          UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (pair, trade_id)
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"""]
    for name, bucket in CANDLE_INTERVALS.items():
        out.append(f"""
CREATE TABLE IF NOT EXISTS candles_{name} (
    pair          LowCardinality(String),
    bucket        DateTime('UTC'),
    open          AggregateFunction(argMin, Int64, UInt64),
    high          SimpleAggregateFunction(max, Int64),
    low           SimpleAggregateFunction(min, Int64),
    close         AggregateFunction(argMax, Int64, UInt64),
    volume        SimpleAggregateFunction(sum, Int64),
    quote_volume  SimpleAggregateFunction(sum, Int128),
    trades        SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (pair, bucket)
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}""")
        # open/close by trade id: ids rise with time within a pair.
        out.append(f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS candles_{name}_mv TO candles_{name} AS
SELECT pair, {bucket}(ts) AS bucket,
       argMinState(price, trade_id) AS open, max(price) AS high, min(price) AS low,
       argMaxState(price, trade_id) AS close, sum(qty) AS volume,
       sum(toInt128(price) * qty) AS quote_volume, toUInt64(count()) AS trades
FROM trades GROUP BY pair, bucket""")
        out.append(f"""
CREATE VIEW IF NOT EXISTS candles_{name}_final AS
SELECT pair, bucket, argMinMerge(open) AS open, max(high) AS high, min(low) AS low,
       argMaxMerge(close) AS close, sum(volume) AS volume,
       sum(quote_volume) AS quote_volume, sum(trades) AS trades
FROM candles_{name} GROUP BY pair, bucket""")
    return out
