"""The PostgreSQL sink's store: trades and orders from keel.events, exactly once.

One batch is one transaction:
  1. lock the batch's pairs in `sink_progress` and drop every event with
     seq <= last_seq (already applied by an earlier run whose Kafka commit was lost);
  2. COPY the rest into session temp tables and move them with
     INSERT ... ON CONFLICT DO NOTHING (trades, new orders) and one UPDATE ... FROM
     (fills and state changes of existing orders);
  3. advance `sink_progress`, COMMIT.
Only then does the caller commit the Kafka offsets. A crash anywhere leaves either the
whole batch or none of it, and a replay drops what was applied, so fills are never
added twice even though orders are updated by delta.

Temp tables need a session: behind PgBouncer run the sink in session pooling mode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from infra.logs import event
from sinks.orders import ORDER_COLUMNS, TRADE_COLUMNS, UPDATE_COLUMNS, batch_rows

log = logging.getLogger(__name__)

SINK = "postgres"

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_trades (
    pair text, trade_id bigint, seq bigint, ts bigint, price bigint, qty bigint,
    taker_side smallint, maker_order_id bigint, maker_user_id bigint, taker_order_id bigint,
    taker_user_id bigint, maker_fee bigint, taker_fee bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_orders (
    pair text, order_id bigint, user_id bigint, side smallint, kind smallint, tif smallint,
    price bigint, qty bigint, quote_qty bigint, remaining bigint, filled_qty bigint,
    filled_quote bigint, status text, reason integer, created_ts bigint, updated_ts bigint,
    last_seq bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_order_updates (
    pair text, order_id bigint, price bigint, remaining bigint, minus bigint,
    filled_qty bigint, filled_quote bigint, status text, reason integer, updated_ts bigint,
    last_seq bigint) ON COMMIT DELETE ROWS;
"""

_LOCK_PROGRESS = ("SELECT pair, last_seq FROM sink_progress "
                  "WHERE sink = %s AND pair = ANY(%s) FOR UPDATE")
_SAVE_PROGRESS = ("INSERT INTO sink_progress (sink, pair, last_seq) VALUES (%s, %s, %s) "
                  "ON CONFLICT (sink, pair) DO UPDATE "
                  "SET last_seq = EXCLUDED.last_seq, updated_at = now()")
_MOVE_TRADES = ("INSERT INTO trades SELECT * FROM stage_trades "
                "ON CONFLICT (pair, trade_id) DO NOTHING")
_MOVE_ORDERS = (f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) "
                f"SELECT {', '.join(ORDER_COLUMNS)} FROM stage_orders "
                "ON CONFLICT (pair, order_id) DO NOTHING")
# A late PARTIALLY_FILLED never overwrites a final status (it cannot happen in a correct
# stream; the guard keeps a final state final if it ever did).
_APPLY_UPDATES = """
UPDATE orders o SET
    price = COALESCE(s.price, o.price),
    remaining = COALESCE(s.remaining, o.remaining) - s.minus,
    filled_qty = o.filled_qty + s.filled_qty,
    filled_quote = o.filled_quote + s.filled_quote,
    status = CASE WHEN s.status IS NULL THEN o.status
                  WHEN s.status = 'PARTIALLY_FILLED'
                       AND o.status NOT IN ('NEW', 'PARTIALLY_FILLED') THEN o.status
                  ELSE s.status END,
    reason = COALESCE(s.reason, o.reason),
    updated_ts = s.updated_ts,
    last_seq = s.last_seq
FROM stage_order_updates s
WHERE o.pair = s.pair AND o.order_id = s.order_id AND s.last_seq > o.last_seq
"""

# Errors that mean "the database is not there right now": retry the same batch. A
# missing table is one of them: `keel up` migrates when PostgreSQL turns healthy, which
# may be a moment after the sink starts (the log names the table meanwhile).
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout,
             psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
             psycopg.errors.UndefinedTable)


@dataclass
class Written:
    events: int = 0          # events applied now
    replayed: int = 0        # events dropped as already applied (seq <= watermark)
    trades: int = 0
    orders: int = 0          # order rows inserted or updated
    gaps: int = 0            # pairs whose seq jumped (events missing upstream)
    max_ts: int = 0          # newest event time in the batch (for the lag metric)


def _configure(conn: psycopg.Connection) -> None:
    conn.execute(_STAGE_DDL)
    conn.commit()


class PostgresStore:
    """Writes batches of engine events; one pool, sized for one writer plus a probe."""

    def __init__(self, dsn: str, sink: str = SINK, pool_size: int = 2,
                 connect_timeout: float = 5.0) -> None:
        self.sink = sink
        self.connect_timeout = connect_timeout
        self.pool = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, configure=_configure,
            check=ConnectionPool.check_connection, reconnect_timeout=86_400,
            kwargs={"connect_timeout": max(1, int(connect_timeout))})

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    def write(self, events: list) -> Written:
        """Apply a batch (in partition order) in one transaction; raises TRANSIENT errors."""
        out = Written()
        if not events:
            return out
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            fresh, moved = self._fresh(conn, events, out)
            if fresh:
                self._apply(conn, fresh, moved, out)
            conn.commit()
        return out

    def _fresh(self, conn: psycopg.Connection, events: list,
               out: Written) -> tuple[list, list[tuple[str, int]]]:
        pairs = sorted({e.pair for e in events})
        marks = dict(conn.execute(_LOCK_PROGRESS, (self.sink, pairs)).fetchall())
        fresh = []
        last = dict(marks)
        for e in events:
            seen = last.get(e.pair, 0)
            if e.seq <= seen:
                out.replayed += 1
                continue
            if e.seq != seen + 1 and (seen or e.seq != 1):
                out.gaps += 1
                event(log, "seq gap", logging.WARNING, pair=e.pair, after=seen, got=e.seq)
            last[e.pair] = e.seq
            fresh.append(e)
            if e.ts > out.max_ts:
                out.max_ts = e.ts
        out.events = len(fresh)
        return fresh, [(p, s) for p, s in last.items() if marks.get(p) != s]

    def _apply(self, conn: psycopg.Connection, fresh: list, moved: list[tuple[str, int]],
               out: Written) -> None:
        rows = batch_rows(fresh)
        orders = rows.new_orders() + rows.rejected_orders()
        updates = rows.order_updates()
        with conn.cursor() as cur:
            if rows.trades:
                _copy(cur, "stage_trades", TRADE_COLUMNS, rows.trades)
                cur.execute(_MOVE_TRADES)
                out.trades = cur.rowcount
            if orders:
                _copy(cur, "stage_orders", ORDER_COLUMNS, orders)
                cur.execute(_MOVE_ORDERS)
                out.orders += cur.rowcount
            if updates:
                _copy(cur, "stage_order_updates", UPDATE_COLUMNS, updates)
                # Without statistics the planner guesses the temp table's size and may
                # scan all of `orders`; a few ms of ANALYZE buys the index nested loop.
                cur.execute("ANALYZE stage_order_updates")
                cur.execute(_APPLY_UPDATES)
                out.orders += cur.rowcount
            cur.executemany(_SAVE_PROGRESS, [(self.sink, p, s) for p, s in moved])

    def watermarks(self) -> dict[str, int]:
        """pair -> last seq applied (for status pages and tests)."""
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            return dict(conn.execute("SELECT pair, last_seq FROM sink_progress WHERE sink = %s",
                                     (self.sink,)).fetchall())


def _copy(cur: psycopg.Cursor, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
