"""The PostgreSQL sink's store: keel.events -> trades and orders, keel.settlements -> ledger
entries, keel.balances -> balances; exactly once.

A batch is prepared where it is polled (decoded to columns, folded, its COPY streams
built: sinks/event_columns.py, order_columns.py, ledger.py) and written by another thread
while the next batch is polled and prepared. Its pairs are split into parts (pairs share
no row), and each part into two jobs, written side by side on connections of their own:
ORDERS (the orders table) and TRADES (trades, plus the batch's ledger entries and
balances). Tables share no row either, and a backlog arrives one partition, so one pair,
at a time: the split by table is what puts a second core to work on it (COPY orders is
~3/4 of the backend's time, trades ~1/4). One job is one transaction:
  1. lock the part's pairs in `sink_progress` under the job's own watermark (sink for
     ORDERS, sink + ':trades' for TRADES; creating the rows of new pairs first, so two
     writers of a new pair queue on the same lock) and drop every event with
     seq <= last_seq (applied by an earlier run whose Kafka commit was lost);
  2. COPY trades, or the orders accepted in this batch, straight into their table: after
     step 1 none of them can exist. If one does all the same (progress rows reset by
     hand), the transaction is redone through temp tables with ON CONFLICT DO NOTHING.
     Orders first seen as rejected (the id may rest from an earlier batch) always take
     that path, and existing orders get one UPDATE ... FROM of their deltas;
  3. (TRADES) ledger entries and balances, idempotent on their natural keys (sinks/ledger.py);
  4. advance the job's watermark, COMMIT.
Only when every job has committed does the caller commit the Kafka offsets. A crash
anywhere leaves each job whole or absent, and a replay drops what was applied, so fills
are never added twice even though orders are updated by delta. The two watermarks of a
pair may then differ, and each job folds the events past its own: an order's row (a new
one with this batch's fills in it, or the delta of an older one) is the ORDERS job's
alone, so the orders table never depends on where the trades' watermark is.

Temp tables need a session: behind PgBouncer run the sink in session pooling mode.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from infra.logs import event
from schemas.codec import Codec, CodecError, RegistryUnavailable
from sinks import ledger
from sinks.event_columns import EventColumns, decode
from sinks.order_columns import OrderTables, fold, fresh
from sinks.orders import ORDER_COLUMNS, TRADE_COLUMNS, UPDATE_COLUMNS
from sinks.source import ends_of

log = logging.getLogger(__name__)

SINK = "postgres"
ORDERS, TRADES = "orders", "trades"     # the two jobs of a part (see PostgresStore.write)
TRADES_SUFFIX = ":trades"               # sink_progress.sink of the TRADES job

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_trades (LIKE trades) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_orders (
    pair text, order_id bigint, user_id bigint, side smallint, kind smallint, tif smallint,
    price bigint, qty bigint, quote_qty bigint, remaining bigint, filled_qty bigint,
    filled_quote bigint, status text, reason integer, created_ts bigint, updated_ts bigint,
    last_seq bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_order_updates (
    pair text, order_id bigint, price bigint, remaining bigint, minus bigint,
    filled_qty bigint, filled_quote bigint, status text, reason integer, updated_ts bigint,
    last_seq bigint) ON COMMIT DELETE ROWS;
""" + ledger.STAGE_DDL

_LOCK_PROGRESS = ("SELECT pair, last_seq FROM sink_progress "
                  "WHERE sink = %s AND pair = ANY(%s) ORDER BY pair FOR UPDATE")
_NEW_PROGRESS = ("INSERT INTO sink_progress (sink, pair, last_seq) "
                 "SELECT %s, p, 0 FROM unnest(%s::text[]) AS p ORDER BY p "
                 "ON CONFLICT (sink, pair) DO NOTHING")
_SAVE_PROGRESS = ("UPDATE sink_progress SET last_seq = v.last_seq, updated_at = now() "
                  "FROM unnest(%s::text[], %s::bigint[]) AS v(pair, last_seq) "
                  "WHERE sink_progress.sink = %s AND sink_progress.pair = v.pair")
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
# missing table or column is one of them: `keel up` migrates when PostgreSQL turns
# healthy, which may be a moment after the sink starts (the log names it meanwhile).
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout,
             psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
             psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)


@dataclass
class Written:
    events: int = 0          # events applied now
    replayed: int = 0        # events dropped as already applied (seq <= watermark)
    trades: int = 0
    orders: int = 0          # order rows inserted or updated
    ledger_entries: int = 0  # entries inserted (a redelivered one is not)
    balances: int = 0        # balance rows inserted or moved to a higher version
    gaps: int = 0            # pairs whose seq jumped (events missing upstream)
    max_ts: int = 0          # newest record time in the batch (for the lag metric)


@dataclass
class Streams:
    """COPY streams of one batch's order tables (payload, rows) by table."""
    trades: tuple[bytes, int]
    new_orders: tuple[bytes, int]
    rejected: tuple[bytes, int]
    updates: tuple[bytes, int]

    @classmethod
    def of(cls, tables: OrderTables) -> Streams:
        return cls(*((t.payload(), len(t)) for t in
                     (tables.trades, tables.new_orders, tables.rejected, tables.updates)))


@dataclass
class Part:
    """What one connection writes of a batch: the events of some pairs (and, for one
    part, the ledger entries and balances)."""
    events: EventColumns
    keep: np.ndarray = field(repr=False)  # fresh within the batch, before the watermarks
    streams: Streams = field(repr=False)  # of the kept events
    ledger: tuple[bytes, int] = (b"", 0)
    balances: tuple[bytes, int] = (b"", 0)

    def trades_work(self) -> bool:
        return bool(self.streams.trades[1] or self.ledger[1] or self.balances[1])


@dataclass
class Batch:
    """A polled batch, ready to write."""
    events: EventColumns
    parts: list[Part]
    max_ts: int = 0


def _configure(conn: psycopg.Connection) -> None:
    conn.execute(_STAGE_DDL)
    conn.commit()


def _groups(cols: EventColumns, n: int) -> list[np.ndarray]:
    """Rows of each of up to n groups of whole pairs, the busiest pairs spread first."""
    counts = np.bincount(cols.pair, minlength=len(cols.pairs))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    if len(present) <= 1 or n <= 1:
        return [np.arange(len(cols))]
    load = [0] * min(n, len(present))
    group_of = np.zeros(len(cols.pairs), np.int64)
    for code in present:
        g = load.index(min(load))
        group_of[code] = g
        load[g] += int(counts[code])
    of_row = group_of[cols.pair]
    return [np.flatnonzero(of_row == g) for g in range(len(load))]


class PostgresStore:
    """Writes prepared batches. Pairs are independent (own rows, own watermark), so a
    batch's pairs are split over `writers` connections, each its own transaction, and
    PostgreSQL works on as many cores; the offsets move only after all of them commit,
    and a part committed before a crash is dropped by its watermarks on the replay."""

    def __init__(self, dsn: str, sink: str = SINK, writers: int = 2, batches: int = 2,
                 connect_timeout: float = 5.0, codec: Codec | None = None,
                 settlements_topic: str | None = None,
                 balances_topic: str | None = None) -> None:
        self.sink = sink
        self.writers = max(1, writers)
        self.connect_timeout = connect_timeout
        self.codec = codec or Codec()
        self.settlements_topic = settlements_topic
        self.balances_topic = balances_topic
        self.pool = ConnectionPool(
            # Every part of every batch in flight (SinkLoop depth) has one, plus a probe.
            dsn, min_size=1, max_size=2 * self.writers * max(1, batches) + 1, open=False,
            configure=_configure,
            check=ConnectionPool.check_connection, reconnect_timeout=86_400,
            kwargs={"connect_timeout": max(1, int(connect_timeout))})
        self._helpers = ThreadPoolExecutor(2 * self.writers * max(1, batches) - 1,
                                           thread_name_prefix="sink-pg")

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self._helpers.shutdown(wait=True)
        self.pool.close()

    # ---- on the polling thread ----

    def prepare(self, msgs: list) -> tuple[Batch, list[tuple[object, CodecError]], dict]:
        """Decode, fold and encode a polled batch; (batch, [(message, error)] dead,
        Source.ends() of the messages)."""
        events, settlements, balances, dead = msgs, [], [], []
        # List comprehensions, not map(methodcaller(...)): a methodcaller makes a bound
        # method per message; these calls do not (~75-100 against ~200-260 ns a message
        # each, 83k real Messages).
        topics = [m.topic() for m in msgs]
        ends = ends_of(msgs, topics, np.array([m.partition() for m in msgs], np.int64))
        if topics.count(self.settlements_topic) or topics.count(self.balances_topic):
            events = []
            for m, topic in zip(msgs, topics, strict=True):
                if topic == self.settlements_topic:
                    settlements.append(m)
                elif topic == self.balances_topic:
                    balances.append(m)
                else:
                    events.append(m)
        cols, faults = decode([m.value() for m in events], self.codec)
        dead += [(events[i], exc) for i, exc in faults]
        records = {"settlement": [], "balance": []}
        for name, read, got in (("settlement", ledger.decode_settlement, settlements),
                                ("balance", ledger.decode_balance, balances)):
            for m in got:
                try:
                    records[name].append(read(self.codec, m.value()))
                except RegistryUnavailable:
                    raise
                except CodecError as exc:
                    dead.append((m, exc))
        batch = self.batch(cols, records["settlement"], records["balance"])
        return batch, dead, ends

    def batch(self, cols: EventColumns, settlements: list[dict] = (),
              balances: list[dict] = ()) -> Batch:
        parts = []
        for rows in _groups(cols, self.writers):
            part = cols if len(rows) == len(cols) else cols.take(rows)
            keep, _, _ = fresh(part, {})
            streams = Streams.of(fold(part if keep.all() else part.take(keep)))
            parts.append(Part(part, keep, streams))
        led, bal = ledger.ledger_table(list(settlements)), ledger.balance_table(list(balances))
        smallest = min(parts, key=lambda p: len(p.events))
        smallest.ledger, smallest.balances = (led.payload(), len(led)), (bal.payload(), len(bal))
        max_ts = max([int(cols.ts.max()) if len(cols) else 0]
                     + [r["ts"] for r in settlements] + [r["ts"] for r in balances])
        return Batch(cols, parts, max_ts)

    # ---- on the writing thread ----

    def write(self, batch: Batch) -> Written:
        """Apply a batch, each part's two jobs (ORDERS, TRADES) in a transaction of
        their own; raises TRANSIENT errors (after every job has finished, so a retry
        never races a job still running)."""
        # A TRADES job with nothing to write is left out (its watermark stays behind,
        # which only ever costs a replay the ON CONFLICT path, never a row).
        jobs = [(p, job) for p in batch.parts for job in (ORDERS, TRADES)
                if (len(p.events) if job == ORDERS else p.trades_work())]
        others = [self._helpers.submit(self._write_part, *j) for j in jobs[1:]]
        results, errors = [], []
        if jobs:
            try:
                results.append(self._write_part(*jobs[0]))
            except Exception as exc:     # noqa: BLE001 - raised below, once all are done
                errors.append(exc)
        for future in others:
            try:
                results.append(future.result())
            except Exception as exc:     # noqa: BLE001 - raised below, once all are done
                errors.append(exc)
        if errors:
            raise errors[0]
        out = Written(max_ts=batch.max_ts)
        for r in results:
            for name in ("events", "replayed", "trades", "orders", "ledger_entries",
                         "balances", "gaps"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
        return out

    def _write_part(self, part: Part, job: str = ORDERS) -> Written:
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            try:
                out = self._write(conn, part, direct=True, job=job)
            except psycopg.errors.UniqueViolation as exc:
                conn.rollback()
                event(log, "rows past the watermark already stored; batch loaded with "
                      "ON CONFLICT", logging.WARNING, error=str(exc)[:300])
                out = self._write(conn, part, direct=False, job=job)
            conn.commit()
        return out

    def _write(self, conn: psycopg.Connection, part: Part, direct: bool,
               job: str = ORDERS) -> Written:
        out = Written()
        cols = part.events
        sink = self.sink if job == ORDERS else f"{self.sink}{TRADES_SUFFIX}"
        with conn.cursor() as cur:
            if len(cols):
                marks = self._lock(cur, sink, [cols.pairs[c] for c in np.unique(cols.pair)])
                keep, last, gaps = fresh(cols, marks)
                if job == ORDERS:            # the orders job speaks for the events
                    for pair, after, got in gaps[:20]:
                        event(log, "seq gap", logging.WARNING, pair=pair, after=after,
                              got=got)
                    out.gaps = len(gaps)
                    out.events = int(keep.sum())
                    out.replayed = len(cols) - out.events
                streams = (part.streams if np.array_equal(keep, part.keep)
                           else Streams.of(fold(cols.take(keep))))
                self._apply(cur, streams, out, direct, job)
                moved = [(p, s) for p, s in last.items() if marks.get(p, 0) != s]
                if moved:
                    cur.execute(_SAVE_PROGRESS, ([p for p, _ in moved], [s for _, s in moved],
                                                 sink))
            if job == TRADES and part.ledger[1]:
                _copy(cur, "stage_ledger", ledger.LEDGER_COLUMNS, part.ledger[0])
                cur.execute(ledger.MOVE_LEDGER)
                out.ledger_entries = cur.rowcount
            if job == TRADES and part.balances[1]:
                _copy(cur, "stage_balances", ledger.BALANCE_COLUMNS, part.balances[0])
                cur.execute(ledger.UPSERT_BALANCES)
                out.balances = cur.rowcount
        return out

    def _lock(self, cur: psycopg.Cursor, sink: str, pairs: list[str]) -> dict[str, int]:
        marks = dict(cur.execute(_LOCK_PROGRESS, (sink, pairs)).fetchall())
        missing = [p for p in pairs if p not in marks]
        if missing:
            cur.execute(_NEW_PROGRESS, (sink, missing))
            marks.update(cur.execute(_LOCK_PROGRESS, (sink, missing)).fetchall())
        return marks

    def _apply(self, cur: psycopg.Cursor, streams: Streams, out: Written,
               direct: bool, job: str = ORDERS) -> None:
        if job == TRADES:
            self._apply_trades(cur, streams, out, direct)
        else:
            self._apply_orders(cur, streams, out, direct)

    def _apply_trades(self, cur: psycopg.Cursor, streams: Streams, out: Written,
                      direct: bool) -> None:
        payload, n = streams.trades
        if n:
            if direct:
                _copy(cur, "trades", TRADE_COLUMNS, payload)
                out.trades = n
            else:
                _copy(cur, "stage_trades", TRADE_COLUMNS, payload)
                cur.execute(_MOVE_TRADES)
                out.trades = cur.rowcount

    def _apply_orders(self, cur: psycopg.Cursor, streams: Streams, out: Written,
                      direct: bool) -> None:
        staged = False
        for (payload, n), straight in ((streams.new_orders, direct), (streams.rejected, False)):
            if not n:
                continue
            if straight:
                _copy(cur, "orders", ORDER_COLUMNS, payload)
                out.orders += n
            else:
                _copy(cur, "stage_orders", ORDER_COLUMNS, payload)
                staged = True
        if staged:
            cur.execute(_MOVE_ORDERS)
            out.orders += cur.rowcount
        payload, n = streams.updates
        if n:
            _copy(cur, "stage_order_updates", UPDATE_COLUMNS, payload)
            # A batch's deltas are a few thousand rows against an `orders` table that
            # only grows: the planner, even after ANALYZE of the temp table, picked a hash
            # join over a scan of every order (68 ms at 130k orders, and rising). One
            # index probe per delta costs the same at any size (20 ms there).
            cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            cur.execute(_APPLY_UPDATES)
            out.orders += cur.rowcount

    def watermarks(self) -> dict[str, int]:
        """pair -> last seq applied to both orders and trades (for status pages and
        tests). A TRADES job skipped for want of trades leaves its watermark behind."""
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            return dict(conn.execute(
                "SELECT pair, min(last_seq) FROM sink_progress WHERE sink IN (%s, %s) "
                "GROUP BY pair", (self.sink, self.sink + TRADES_SUFFIX)).fetchall())


def _copy(cur: psycopg.Cursor, table: str, columns: tuple[str, ...], payload: bytes) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(payload)
