"""The ClickHouse sink's store: keel.depth -> depth, keel.events -> trades (and, through
the materialized views, candles). See sinks/clickhouse_schema.py for why every block is
exactly-once, views included.

Positions come from the tables themselves (on_assign seeks there); Kafka's committed
offsets are still committed after each write, for lag monitoring and for partitions
that have nothing in the tables yet.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from confluent_kafka import TopicPartition

from engine.domain import Trade
from infra.logs import event
from schemas.codec import CodecError
from sinks.clickhouse_schema import (
    DEPTH_COLUMNS,
    INSERT_SETTINGS,
    TRADE_COLUMNS,
    statements,
)
from sinks.depth_avro import HEADER_LEN, current_header, insert_file, read_head

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def _transient() -> tuple[type[BaseException], ...]:
    from clickhouse_connect.driver.exceptions import OperationalError
    return (OperationalError, ConnectionError, TimeoutError, OSError)


@dataclass
class Written:
    trades: int = 0
    depth_rows: int = 0
    depth_levels: int = 0
    max_ts: int = 0


@dataclass
class _Replay:
    """The last trades block of a partition, being read again to be inserted again."""
    first: int
    last: int
    rows: list = field(default_factory=list)
    complete: bool = False


class ClickHouseStore:
    def __init__(self, client, events_topic: str, depth_topic: str,
                 lock: threading.Lock | None = None, depth_ttl_days: int = 30,
                 raw_depth: bool = False, dead_letter=None) -> None:
        self.client = client
        # Embedded chDB only: depth bodies go to ClickHouse undecoded (sinks/depth_avro.py).
        self.raw_depth = raw_depth
        self.dead_letter = dead_letter           # (topic, partition, offset, value, CodecError)
        self._codec = None
        self.lock = lock or threading.Lock()
        self.events_topic = events_topic
        self.depth_topic = depth_topic
        self.depth_ttl_days = depth_ttl_days
        self.transient = _transient()
        self._replay: dict[int, _Replay] = {}
        self._trade_marks: dict[str, int] = {}            # pair -> last trade seq kept
        self._depth_marks: dict[str, tuple[int, int]] = {}  # pair -> (last_update_id, snapshot)

    # ---- schema and positions ----

    def ensure_schema(self) -> None:
        with self.lock:
            for sql in statements(self.depth_ttl_days):
                self.client.command(sql)

    def positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where to resume each partition, from the tables; also primes the seq marks."""
        out = []
        with self.lock:
            for tp in partitions:
                if tp.topic == self.events_topic:
                    start = self._resume_trades(tp.partition)
                else:
                    start = self._resume_depth(tp.partition)
                out.append(TopicPartition(tp.topic, tp.partition, start)
                           if start is not None else tp)
        return out

    def _rows(self, sql: str, **params) -> list[tuple]:
        return self.client.query(sql, parameters=params).result_rows

    def _resume_trades(self, p: int) -> int | None:
        last = self._rows("SELECT _batch, max(_offset) FROM trades WHERE _partition = {p:UInt32} "
                          "GROUP BY _batch ORDER BY _batch DESC LIMIT 1", p=p)
        if not last:
            return None
        first, end = last[0]
        for pair, seq in self._rows("SELECT pair, max(seq) FROM trades WHERE _partition = "
                                    "{p:UInt32} AND _offset < {first:UInt64} GROUP BY pair",
                                    p=p, first=first):
            self._trade_marks[pair] = seq
        self._replay[p] = _Replay(first, end)
        return first

    def _resume_depth(self, p: int) -> int | None:
        marks = self._rows("SELECT pair, max((last_update_id, is_snapshot)), max(_offset) "
                           "FROM depth WHERE _partition = {p:UInt32} GROUP BY pair", p=p)
        if not marks:
            return None
        for pair, (update_id, snapshot), _ in marks:
            self._depth_marks[pair] = (update_id, int(snapshot))
        return max(row[2] for row in marks) + 1

    # ---- writing ----

    def decode(self, codec):
        """A message -> (topic kind, partition, offset, value) decoder for SinkLoop."""
        events, depth = self.events_topic, self.depth_topic
        self._codec = codec
        raw_header = current_header() if self.raw_depth else None

        def decode(m):
            topic = m.topic()
            if topic == events:
                return (0, m.partition(), m.offset(), codec.decode_event(m.value()))
            if topic == depth:
                value = m.value()
                if raw_header is not None and value[:HEADER_LEN] == raw_header:
                    return (2, m.partition(), m.offset(), value)
                return (1, m.partition(), m.offset(), codec.decode("depth_update", value))
            raise ValueError(f"unexpected topic {topic}")
        return decode

    def write(self, items: list) -> Written:
        """Insert a batch; on any failure the in-memory marks and the block being replayed
        are as before, so a retry of the same items builds the same blocks (same tokens:
        whatever of them did reach the tables is dropped as a repeat)."""
        saved = (dict(self._trade_marks), dict(self._depth_marks),
                 {p: _Replay(r.first, r.last, list(r.rows), r.complete)
                  for p, r in self._replay.items()})
        try:
            return self._write(items)
        except BaseException:
            self._trade_marks, self._depth_marks, self._replay = saved
            raise

    def _write(self, items: list) -> Written:
        out = Written()
        trades: dict[int, list] = {}
        depth: dict[int, list] = {}
        raw: dict[int, list] = {}
        replay = self._replay
        items = self._one_depth_path(items)
        for kind, p, offset, value in items:
            if kind == 0:
                if type(value) is Trade:
                    self._trade(p, offset, value, trades, out)
                if replay and p in replay and offset >= replay[p].last:
                    replay[p].complete = True
            elif kind == 2:
                self._raw_depth(p, offset, value, raw, out)
            else:
                self._depth(p, offset, value, depth, out)
        with self.lock:
            # The block read again goes in first, whole, under its old token.
            for p, block in list(replay.items()):
                if block.complete:
                    if block.rows:
                        self._insert("trades", TRADE_COLUMNS, p, block.rows)
                    del replay[p]
            for p, rows in trades.items():
                for block in _blocks(rows, 3, 30 * DAY_MS):
                    for row in block:
                        row[15] = block[0][14]
                    self._insert("trades", TRADE_COLUMNS, p, block)
            for p, rows in depth.items():
                for block in _blocks(rows, 1, DAY_MS):
                    self._insert("depth", DEPTH_COLUMNS, p, block)
            for p, rows in raw.items():
                for block in _blocks(rows, 2, DAY_MS):
                    self._insert_raw(p, block)
        return out

    def _one_depth_path(self, items: list) -> list:
        """A partition whose batch mixes raw and decoded depth goes all decoded: its rows
        must reach the table in offset order (resuming trusts max(_offset))."""
        mixed = {p for kind, p, _, _ in items if kind == 1}
        if not mixed or not any(kind == 2 for kind, _, _, _ in items):
            return items
        out = []
        for item in items:
            kind, p, offset, value = item
            if kind == 2 and p in mixed:
                decoded = self._decode_depth(p, offset, value)
                if decoded is not None:
                    out.append((1, p, offset, decoded))
            else:
                out.append(item)
        return out

    def _decode_depth(self, p: int, offset: int, value: bytes):
        try:
            return self._codec.decode("depth_update", value)
        except CodecError as exc:
            if self.dead_letter is None:
                raise
            self.dead_letter(self.depth_topic, p, offset, value, exc)
            return None

    def _raw_depth(self, p: int, offset: int, value: bytes, raw: dict, out: Written) -> None:
        try:
            pair, _, last, ts, snapshot = read_head(value)
        except (IndexError, ValueError):
            # A body whose first fields do not parse cannot decode: the codec says why and
            # the record goes to keel.dlq.
            if self._decode_depth(p, offset, value) is not None:
                raise RuntimeError("depth head unreadable but the record decodes") from None
            return
        mark = (last, int(snapshot))
        if mark <= self._depth_marks.get(pair, (0, 0)):
            return
        self._depth_marks[pair] = mark
        raw.setdefault(p, []).append((offset, value, ts))
        out.depth_rows += 1
        if ts > out.max_ts:
            out.max_ts = ts

    def _insert_raw(self, p: int, block: list) -> None:
        token = f"depth:{p}:{block[0][0]}:{block[-1][0]}"
        try:
            insert_file(self.client, [(o, v) for o, v, _ in block], p, token)
        except self.transient:
            raise
        except Exception as exc:
            # ClickHouse could not read a body: decode them here, set the bad ones aside
            # and insert the rest the ordinary way.
            event(log, "depth block unreadable by ClickHouse, decoding in Python",
                  logging.WARNING, partition=p, error=str(exc)[:300])
            rows = []
            for offset, value, _ in block:
                d = self._decode_depth(p, offset, value)
                if d is not None:
                    rows.append(_depth_row(d, p, offset))
            if rows:
                self._insert("depth", DEPTH_COLUMNS, p, rows)

    def _trade(self, p: int, offset: int, e: Trade, trades: dict, out: Written) -> None:
        if e.seq <= self._trade_marks.get(e.pair, 0):
            return                                        # already stored
        self._trade_marks[e.pair] = e.seq
        row = [e.pair, e.trade_id, e.seq, e.ts, e.price, e.qty, e.taker_side,
               e.maker_order_id, e.maker_user_id, e.taker_order_id, e.taker_user_id,
               e.maker_fee, e.taker_fee, p, offset, 0]
        replay = self._replay.get(p)
        if replay is not None and offset <= replay.last:
            row[15] = replay.first
            replay.rows.append(row)
        else:
            trades.setdefault(p, []).append(row)
            out.trades += 1
        if e.ts > out.max_ts:
            out.max_ts = e.ts

    def _depth(self, p: int, offset: int, d: dict, depth: dict, out: Written) -> None:
        mark = (d["last_update_id"], int(d["is_snapshot"]))
        if mark <= self._depth_marks.get(d["pair"], (0, 0)):
            return
        self._depth_marks[d["pair"]] = mark
        depth.setdefault(p, []).append(_depth_row(d, p, offset))
        out.depth_rows += 1
        out.depth_levels += len(d["bids"]) + len(d["asks"])
        if d["ts"] > out.max_ts:
            out.max_ts = d["ts"]

    def _insert(self, table: str, columns: tuple[str, ...], p: int, rows: list) -> None:
        first, last = rows[0][columns.index("_offset")], rows[-1][columns.index("_offset")]
        settings = dict(INSERT_SETTINGS, insert_deduplication_token=f"{table}:{p}:{first}:{last}")
        self.client.insert(table, rows, column_names=list(columns), settings=settings)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {t: self._rows(f"SELECT count() FROM {t}")[0][0] for t in ("trades", "depth")}


def _depth_row(d: dict, p: int, offset: int) -> tuple:
    bids, asks = d["bids"], d["asks"]
    return (d["pair"], d["ts"], d["first_update_id"], d["last_update_id"], d["is_snapshot"],
            [lv["price"] for lv in bids], [lv["qty"] for lv in bids],
            [lv["price"] for lv in asks], [lv["qty"] for lv in asks], p, offset)


def _blocks(rows: list, ts_index: int, span_ms: int) -> list[list]:
    """Cut rows (in offset order) where the table partition (day or month) changes."""
    blocks: list[list] = []
    current = None
    for row in rows:
        key = _partition_key(row[ts_index], span_ms)
        if key != current:
            blocks.append([])
            current = key
        blocks[-1].append(row)
    return blocks


def _partition_key(ts_ms: int, span_ms: int) -> int:
    day = ts_ms // DAY_MS
    return day if span_ms == DAY_MS else _month(day)


@lru_cache(maxsize=4096)
def _month(day: int) -> int:
    d = datetime.fromtimestamp(day * 86_400, UTC)
    return d.year * 12 + d.month


def log_positions(positions: list[TopicPartition]) -> None:
    event(log, "resuming from the tables", logging.INFO,
          positions=[f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in positions])
