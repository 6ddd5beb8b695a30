"""The PostgreSQL sink's store: keel.events -> trades and orders, keel.settlements -> ledger
entries, keel.balances -> balances; exactly once.

A batch is prepared where it is polled (decoded to columns, folded, its COPY streams
built: sinks/event_columns.py, order_columns.py, ledger.py) and written by another thread
while the next batch is polled and prepared. Its rows are split into parts by pair and
by order id (sinks/shards.py: units that share no row, each with its own watermark),
written side by side on their own connections. One part is one transaction:
  1. lock the watermarks of the part's units in `sink_progress` (the rows of a new pair
     are made beforehand, in a transaction of their own) and drop, per unit, every event
     with seq <= last_seq (applied by an earlier run whose Kafka commit was lost);
  2. COPY trades and the orders accepted in this batch straight into their tables: after
     step 1 none of them can exist. If one does all the same (progress rows reset by
     hand), the transaction is redone through temp tables with ON CONFLICT DO NOTHING.
     Orders first seen as rejected (the id may rest from an earlier batch) always take
     that path, and existing orders get one UPDATE ... FROM of their deltas;
  3. ledger entries and balances, idempotent on their natural keys (sinks/ledger.py);
  4. advance `sink_progress`, COMMIT.
Only when every part has committed does the caller commit the Kafka offsets. A crash
anywhere leaves each part whole or absent, and a replay drops what was applied, so fills
are never added twice even though orders are updated by delta.

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
from sinks import ledger, shards
from sinks.event_columns import EventColumns, decode
from sinks.order_columns import OrderTables, fold, fresh
from sinks.orders import ORDER_COLUMNS, TRADE_COLUMNS, UPDATE_COLUMNS
from sinks.source import PARTITION, TOPIC, VALUE, ends_of

log = logging.getLogger(__name__)

SINK = "postgres"

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

_LOCK_PROGRESS = ("SELECT p.sink, p.pair, p.last_seq FROM sink_progress p "
                  "JOIN unnest(%s::text[], %s::text[]) AS u(sink, pair) USING (sink, pair) "
                  "ORDER BY p.sink, p.pair FOR UPDATE OF p")
_NEW_PROGRESS = ("INSERT INTO sink_progress (sink, pair, last_seq) "
                 "SELECT s, p, 0 FROM unnest(%s::text[], %s::text[]) AS u(s, p) ORDER BY s, p "
                 "ON CONFLICT (sink, pair) DO NOTHING")
# The other shards' rows of a pair start where shard 0 (the sink's own row) stands: a
# pair last written before shards existed has applied everything up to it.
_NEW_SHARDS = ("INSERT INTO sink_progress (sink, pair, last_seq) "
               "SELECT v.sink, b.pair, b.last_seq FROM sink_progress b "
               "CROSS JOIN unnest(%s::text[]) AS v(sink) "
               "WHERE b.sink = %s AND b.pair = ANY(%s) ORDER BY 1, 2 "
               "ON CONFLICT (sink, pair) DO NOTHING")
_SAVE_PROGRESS = ("UPDATE sink_progress SET last_seq = v.last_seq, updated_at = now() "
                  "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS v(sink, pair, last_seq) "
                  "WHERE sink_progress.sink = v.sink AND sink_progress.pair = v.pair")
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
    events: int = 0          # events applied now (by some unit of their pair)
    replayed: int = 0        # events some unit dropped as already applied (a unit's
                             # watermark may stand past another's after a crash)
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
    """What one connection writes of a batch: the rows of some units (pair, shard) (and,
    for one part, the ledger entries and balances)."""
    units: list[tuple[str, int]]
    events: EventColumns                  # every event of the units' pairs
    keep: np.ndarray = field(repr=False)  # fresh within the batch, before the watermarks
    streams: Streams = field(repr=False)  # the units' rows of the kept events
    ledger: tuple[bytes, int] = (b"", 0)
    balances: tuple[bytes, int] = (b"", 0)

    def empty(self) -> bool:
        return not len(self.events) and not self.ledger[1] and not self.balances[1]


@dataclass
class Batch:
    """A polled batch, ready to write."""
    events: EventColumns
    parts: list[Part]
    max_ts: int = 0


def _configure(conn: psycopg.Connection) -> None:
    conn.execute(_STAGE_DDL)
    conn.commit()


def _of_pairs(cols: EventColumns, codes) -> tuple[EventColumns, np.ndarray]:
    """(the events of the pair codes `codes`, which of `cols` they are); `cols` itself
    when that is all of them."""
    mine = np.isin(cols.pair, list(codes))
    return (cols if mine.all() else cols.take(mine)), mine


class PostgresStore:
    """Writes prepared batches. Units (pair, shard) are independent (own rows, own
    watermark), so a batch's units are split over `writers` connections, each its own
    transaction, and PostgreSQL works on as many cores; the offsets move only after all
    of them commit, and a part committed before a crash is dropped by its watermarks on
    the replay."""

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
        self._ready: set[str] = set()     # pairs whose watermark rows all exist
        self.pool = ConnectionPool(
            # Every part of every batch in flight (SinkLoop depth) has one, plus a probe.
            dsn, min_size=1, max_size=self.writers * max(1, batches) + 1, open=False,
            configure=_configure,
            check=ConnectionPool.check_connection, reconnect_timeout=86_400,
            kwargs={"connect_timeout": max(1, int(connect_timeout))})
        self._helpers = (ThreadPoolExecutor((self.writers - 1) * max(1, batches),
                                            thread_name_prefix="sink-pg")
                         if self.writers > 1 else None)

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)
        self.pool.close()

    # ---- on the polling thread ----

    def prepare(self, msgs: list) -> tuple[Batch, list[tuple[object, CodecError]], dict]:
        """Decode, fold and encode a polled batch; (batch, [(message, error)] dead,
        Source.ends() of the messages)."""
        events, settlements, balances, dead = msgs, [], [], []
        topics = list(map(TOPIC, msgs))
        ends = ends_of(msgs, topics, np.fromiter(map(PARTITION, msgs), np.int64, len(msgs)))
        if topics.count(self.settlements_topic) or topics.count(self.balances_topic):
            events = []
            for m, topic in zip(msgs, topics, strict=True):
                if topic == self.settlements_topic:
                    settlements.append(m)
                elif topic == self.balances_topic:
                    balances.append(m)
                else:
                    events.append(m)
        cols, faults = decode(list(map(VALUE, events)), self.codec)
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
        # One fold for the whole batch (fresh() and fold() work pair by pair), then
        # each part takes its units' rows.
        keep, _, _ = fresh(cols, {})
        tables = fold(cols if keep.all() else cols.take(keep))
        parts = []
        for units in shards.groups(cols, self.writers):
            events, mine = _of_pairs(cols, {c for c, _ in units})
            streams = Streams.of(shards.select(tables, units, len(cols.pairs)))
            parts.append(Part([(cols.pairs[c], s) for c, s in units], events, keep[mine],
                              streams))
        led, bal = ledger.ledger_table(list(settlements)), ledger.balance_table(list(balances))
        smallest = min(parts, key=lambda p: len(p.events))
        smallest.ledger, smallest.balances = (led.payload(), len(led)), (bal.payload(), len(bal))
        max_ts = max([int(cols.ts.max()) if len(cols) else 0]
                     + [r["ts"] for r in settlements] + [r["ts"] for r in balances])
        return Batch(cols, parts, max_ts)

    # ---- on the writing thread ----

    def write(self, batch: Batch) -> Written:
        """Apply a batch, each part in one transaction; raises TRANSIENT errors (after
        every part has finished, so a retry never races a part still running)."""
        parts = [p for p in batch.parts if not p.empty()]
        self._ensure_progress(sorted({pair for p in parts for pair, _ in p.units}))
        others = [self._helpers.submit(self._write_part, p) for p in parts[1:]]
        results, errors = [], []
        if parts:
            try:
                results.append(self._write_part(parts[0]))
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
        seen: dict[str, np.ndarray] = {}        # pair -> (applied, dropped) per event
        for r, part_seen in results:
            for name in ("trades", "orders", "ledger_entries", "balances", "gaps"):
                setattr(out, name, getattr(out, name) + getattr(r, name))
            for pair, marks in part_seen.items():
                seen[pair] = seen[pair] | marks if pair in seen else marks
        out.events = sum(int(m[0].sum()) for m in seen.values())
        out.replayed = sum(int(m[1].sum()) for m in seen.values())
        return out

    def _ensure_progress(self, pairs: list[str]) -> None:
        """Make the watermark rows of new pairs, every shard's, before any part locks
        them (a part only locks: two parts never wait on each other's rows)."""
        new = [p for p in pairs if p not in self._ready]
        if not new:
            return
        names = shards.shard_sinks(self.sink)
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            conn.execute(_NEW_PROGRESS, ([self.sink] * len(new), new))
            conn.execute(_NEW_SHARDS, (names[1:], self.sink, new))
            conn.commit()
        self._ready.update(new)

    def _write_part(self, part: Part) -> tuple[Written, dict[str, np.ndarray]]:
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            try:
                out = self._write(conn, part, direct=True)
            except psycopg.errors.UniqueViolation as exc:
                conn.rollback()
                event(log, "rows past the watermark already stored; batch loaded with "
                      "ON CONFLICT", logging.WARNING, error=str(exc)[:300])
                out = self._write(conn, part, direct=False)
            conn.commit()
        return out

    def _write(self, conn: psycopg.Connection, part: Part, direct: bool
               ) -> tuple[Written, dict[str, np.ndarray]]:
        """(report, {pair: [which of its events a unit of the part applied, which one
        dropped]})."""
        out, cols, seen = Written(), part.events, {}
        with conn.cursor() as cur:
            if len(cols):
                marks = self._lock(cur, part.units)
                views = shards.fresh_units(cols, part.units, marks)
                # Every shard of a pair sees the same seqs: its gaps are told by shard 0.
                gaps = [g for v in views if v.shard == 0 for g in v.gaps]
                for pair, after, got in gaps[:20]:
                    event(log, "seq gap", logging.WARNING, pair=pair, after=after, got=got)
                out.gaps = len(gaps)
                same = all(np.array_equal(v.keep, part.keep[v.rows]) for v in views)
                moved = [(shards.sink_name(self.sink, v.shard), p, s) for v in views
                         for p, s in v.last.items() if marks[(p, v.shard)] != s]
                seen = shards.seen(views)
                # Replays (a unit's watermark past some of the batch): fold again what
                # each unit still needs.
                streams = part.streams if same else Streams.of(shards.concat([
                    shards.select(fold(v.events.take(v.keep)), v.units, len(cols.pairs))
                    for v in views]))
                self._apply(cur, streams, out, direct)
                if moved:
                    cur.execute(_SAVE_PROGRESS, tuple(list(c) for c in zip(*moved,
                                                                           strict=True)))
            if part.ledger[1]:
                _copy(cur, "stage_ledger", ledger.LEDGER_COLUMNS, part.ledger[0])
                cur.execute(ledger.MOVE_LEDGER)
                out.ledger_entries = cur.rowcount
            if part.balances[1]:
                _copy(cur, "stage_balances", ledger.BALANCE_COLUMNS, part.balances[0])
                cur.execute(ledger.UPSERT_BALANCES)
                out.balances = cur.rowcount
        return out, seen

    def _lock(self, cur: psycopg.Cursor, units: list[tuple[str, int]]
              ) -> dict[tuple[str, int], int]:
        """(pair, shard) -> last seq, the units' rows locked. A row missing here (deleted
        by hand) starts at 0: the batch then goes through the ON CONFLICT path."""
        shard_of = {shards.sink_name(self.sink, s): s for _, s in units}
        wanted = sorted((shards.sink_name(self.sink, s), p) for p, s in units)

        def lock(keys):
            rows = cur.execute(_LOCK_PROGRESS, ([k[0] for k in keys], [k[1] for k in keys]))
            return {(pair, shard_of[sink]): seq for sink, pair, seq in rows.fetchall()}
        marks = lock(wanted)
        missing = [k for k in wanted if (k[1], shard_of[k[0]]) not in marks]
        if missing:
            cur.execute(_NEW_PROGRESS, ([k[0] for k in missing], [k[1] for k in missing]))
            marks.update(lock(missing))
        return marks

    def _apply(self, cur: psycopg.Cursor, streams: Streams, out: Written,
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
        """pair -> last seq applied to every shard (for status pages and tests)."""
        with self.pool.connection(timeout=self.connect_timeout) as conn:
            return dict(conn.execute("SELECT pair, min(last_seq) FROM sink_progress "
                                     "WHERE sink = ANY(%s) GROUP BY pair",
                                     (shards.shard_sinks(self.sink),)).fetchall())


def _copy(cur: psycopg.Cursor, table: str, columns: tuple[str, ...], payload: bytes) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(payload)
