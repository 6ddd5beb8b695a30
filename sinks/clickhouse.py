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

import numpy as np
from confluent_kafka import TopicPartition

from engine.domain import Trade
from infra.logs import event
from schemas.codec import Codec, CodecError, RegistryUnavailable
from sinks import depth_columns, depth_native
from sinks.clickhouse_schema import (
    DEPTH_COLUMNS,
    INSERT_SETTINGS,
    TRADE_COLUMNS,
    statements,
)
from sinks.depth_native import current_header, insert_file
from sinks.source import ends_of

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def _database_error() -> type[BaseException]:
    from clickhouse_connect.driver.exceptions import DatabaseError
    return DatabaseError


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


@dataclass
class RawDepth:
    """Depth records of one batch, all read by depth_columns, as polled (each partition's
    in offset order): bodies for ClickHouse, heads for the replay marks and day cuts.
    One chunk holds a whole batch (every partition) when the walk vouched for all of it,
    else one partition's."""
    values: list
    offsets: np.ndarray
    heads: depth_columns.DepthHeads
    partitions: np.ndarray | None = None     # per record; None: all of the item's partition


class ClickHouseStore:
    def __init__(self, client, events_topic: str, depth_topic: str,
                 lock: threading.Lock | None = None, depth_ttl_days: int = 30,
                 raw_depth: bool = False, dead_letter=None,
                 blocks_dir: str | None = None) -> None:
        self.client = client
        # Embedded chDB only: depth goes in as Native blocks (sinks/depth_native.py),
        # through files in blocks_dir (the system's temp dir if None).
        self.raw_depth = raw_depth
        self.blocks_dir = blocks_dir
        self.dead_letter = dead_letter           # (topic, partition, offset, value, CodecError)
        self._codec = None
        self.lock = lock or threading.Lock()           # the client: one thread at a time
        # The marks and the block being replayed: a batch written on the loop's worker
        # thread and a rebalance (positions(), on the polling thread) never interleave.
        self._state = threading.Lock()
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
        with self._state, self.lock:
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

    def prepare(self, codec):
        """A messages -> (items, [(message, CodecError)]) function for SinkLoop, run where
        the batch is polled. Items are (kind, partition, offset, value): 0 an engine
        event, 1 a decoded depth update, 3 a RawDepth (a whole partition's depth, or
        the whole batch's)."""
        events, depth = self.events_topic, self.depth_topic
        self._codec = codec
        header = current_header() if self.raw_depth else None

        def prepare(msgs: list) -> tuple[list, list, dict]:
            items, dead = [], []
            topics, partitions, offsets, values = _fields(msgs)
            n_depth = topics.count(depth)
            if n_depth == len(msgs):
                mine = None
            else:
                mine = [i for i, t in enumerate(topics) if t == depth]
                decode_event = codec.decode_event
                for m, topic in zip(msgs, topics, strict=True):
                    if topic == depth:
                        continue
                    if topic != events:
                        raise ValueError(f"unexpected topic {topic}")
                    try:
                        items.append((0, m.partition(), m.offset(), decode_event(m.value())))
                    except RegistryUnavailable:
                        raise
                    except CodecError as exc:
                        dead.append((m, exc))
            if mine is None:
                self._prepare_depth(msgs, partitions, offsets, values, header, items, dead)
            elif mine:
                self._prepare_depth([msgs[i] for i in mine], partitions[mine], offsets[mine],
                                    [values[i] for i in mine], header, items, dead)
            return items, dead, ends_of(msgs, topics, partitions)
        return prepare

    def _prepare_depth(self, msgs: list, partition: np.ndarray, offset: np.ndarray,
                       values: list, header: bytes | None, items: list, dead: list) -> None:
        """Items of a batch's depth records: one RawDepth of them all when the walk
        vouches for every record (read in one go for the batch), else a RawDepth per
        partition whose records it all vouches for and the others' records decoded one by
        one."""
        n = len(msgs)
        heads = depth_columns.read(values, header) if header is not None else None
        if heads is not None and len(heads) == n:
            # As polled: each partition's records in offset order, partitions in runs.
            items.append((3, int(partition[0]), int(offset[0]),
                          RawDepth(values, offset, heads, partition)))
            return
        if heads is not None:
            read = np.zeros(n, bool)
            read[heads.index] = True
        single = bool((partition == partition[0]).all())
        for p in ([int(partition[0])] if single else dict.fromkeys(partition.tolist())):
            rows = np.arange(n) if single else np.flatnonzero(partition == p)
            mine = values if single else [values[i] for i in rows.tolist()]
            if heads is not None and read[rows].all():
                chunk = RawDepth(mine, offset[rows],
                                 heads.take(np.searchsorted(heads.index, rows)),
                                 np.full(len(rows), p, np.int64))
                items.append((3, p, int(offset[rows[0]]), chunk))
                continue
            # Any record the walk does not vouch for sends its partition's whole batch
            # through the codec: rows reach the table in offset order (resuming trusts
            # max(_offset)).
            for i, value in zip(rows.tolist(), mine, strict=True):
                try:
                    items.append((1, p, int(offset[i]), self._codec.decode("depth_update",
                                                                           value)))
                except RegistryUnavailable:
                    raise
                except CodecError as exc:
                    dead.append((msgs[i], exc))

    def write(self, items: list) -> Written:
        """Insert a batch; on any failure the in-memory marks and the block being replayed
        are as before, so a retry of the same items builds the same blocks (same tokens:
        whatever of them did reach the tables is dropped as a repeat)."""
        with self._state:
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
        raw: list[tuple[RawDepth, np.ndarray]] = []
        replay = self._replay
        for kind, p, offset, value in items:
            if kind == 0:
                if type(value) is Trade:
                    self._trade(p, offset, value, trades, out)
                if replay and p in replay and offset >= replay[p].last:
                    replay[p].complete = True
            elif kind == 3:
                if value.partitions is None:
                    value.partitions = np.full(len(value.offsets), p, np.int64)
                raw.append((value, self._fresh(value, out)))
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
            for block in _raw_blocks(raw):
                self._insert_raw(block)
        return out

    def _decode_depth(self, p: int, offset: int, value: bytes):
        if self._codec is None:                # prepare() was not asked for: a test
            self._codec = Codec()
        try:
            return self._codec.decode("depth_update", value)
        except CodecError as exc:
            if self.dead_letter is None:
                raise
            self.dead_letter(self.depth_topic, p, offset, value, exc)
            return None

    def _fresh(self, chunk: RawDepth, out: Written) -> np.ndarray:
        """Indices of the chunk's records past their pair's mark (the rest were stored
        before: a replay), advancing the marks as _depth does one record at a time."""
        heads = chunk.heads
        mark = heads.mark()
        keep = np.zeros(len(heads), bool)
        for code, pair in enumerate(heads.pairs):
            rows = np.flatnonzero(heads.pair == code)
            if not rows.size:
                continue
            part = chunk.partitions[rows]
            if (part != part[0]).any():
                # A pair on several partitions: partition after partition, in the order
                # they first come (each in offset order), as when a chunk was a partition.
                rows = rows[np.argsort(_first_come(part)[part], kind="stable")]
            last, snapshot = self._depth_marks.get(pair, (0, 0))
            stored = min(last * 2 + snapshot, np.iinfo(np.int64).max)
            mine = mark[rows]
            # A record is new when it passes the stored mark and every record before it.
            before = np.maximum.accumulate(np.concatenate(([stored], mine[:-1])))
            keep[rows] = mine > before
            top = int(max(stored, mine.max()))
            if top > stored:
                self._depth_marks[pair] = (top >> 1, top & 1)
        index = np.flatnonzero(keep)
        if index.size:
            out.depth_rows += int(index.size)
            out.depth_levels += int(heads.levels[index].sum())
            out.max_ts = max(out.max_ts, int(heads.ts[index].max()))
        return index

    def _insert_raw(self, block: list[tuple[RawDepth, np.ndarray]]) -> None:
        """One insert of (chunk, indices of the chunk) parts, all of one day."""
        offsets = [chunk.offsets[index] for chunk, index in block]
        partitions = [chunk.partitions[index] for chunk, index in block]
        heads = depth_columns.concat([chunk.heads.take(index) for chunk, index in block])
        offsets = offsets[0] if len(block) == 1 else np.concatenate(offsets)
        partitions = partitions[0] if len(block) == 1 else np.concatenate(partitions)
        # The table's order is (pair, ts, last_update_id): rows of a pair come in offset
        # order, so pairs in name order give ClickHouse a block it need not sort (an
        # unsorted 50k-row block cost it ~0.3 us a row more).
        sorted_ = heads, partitions, offsets
        rank = np.argsort(np.argsort(heads.pairs)).astype(np.int16)[heads.pair] \
            if len(heads.pairs) > 1 else None
        if rank is not None and (rank[1:] < rank[:-1]).any():
            order = np.argsort(rank, kind="stable")
            sorted_ = heads.take(order), partitions[order], offsets[order]
        # The token: each partition's first and last offset in the block.
        ranges = []
        for p in np.unique(partitions).tolist():
            mine = offsets[partitions == p]
            ranges.append(f"{p}:{mine.min()}:{mine.max()}")
        try:
            insert_file(self.client, depth_native.block(*sorted_),
                        "depth:" + ",".join(ranges), self.blocks_dir)
        except self.transient:
            raise
        except _database_error() as exc:
            # ClickHouse could not read a body (the walk should have caught it): decode
            # them here, set the bad ones aside and insert the rest the ordinary way.
            # Only ClickHouse's refusal: a bug of ours must not quietly send every block
            # down this slow path.
            event(log, "depth block unreadable by ClickHouse, decoding in Python",
                  logging.WARNING, error=str(exc)[:300])
            values = [chunk.values[i] for chunk, index in block for i in index.tolist()]
            rows: dict[int, list] = {}
            for offset, p, value in zip(offsets.tolist(), partitions.tolist(), values,
                                        strict=True):
                d = self._decode_depth(p, offset, value)
                if d is not None:
                    rows.setdefault(p, []).append(_depth_row(d, p, offset))
            for p, part in rows.items():
                self._insert("depth", DEPTH_COLUMNS, p, part)

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


def _fields(msgs: list) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    """(topics, partitions, offsets, values) of a batch, in one pass over its messages.

    A map of a methodcaller per field walked the tens of thousands of Message objects
    once per field, each call looking the method up by name: ~0.6-0.9 us a message for
    the four, against ~0.3 for this loop (50k consumed depth records, thread CPU, best
    of 5, load 2.5-7)."""
    topics: list[str] = []
    partitions: list[int] = []
    offsets: list[int] = []
    values: list = []
    topic, partition, offset, value = (topics.append, partitions.append, offsets.append,
                                       values.append)
    for m in msgs:
        topic(m.topic())
        partition(m.partition())
        offset(m.offset())
        value(m.value())
    return (topics, np.array(partitions, np.int64), np.array(offsets, np.int64), values)


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


def _raw_blocks(raw: list[tuple[RawDepth, np.ndarray]]) -> list[list]:
    """Insert blocks of the raw depth path: [(chunk, indices)] each, all rows of a block
    in one day (one table partition, so one part: all or nothing).

    Inserts cost chDB a lot per insert (a 5k-row insert ~5 us a row, 50k ~2.5), so when
    every kept record falls on one day, as nearly always, the whole batch is one block.
    Otherwise each partition is cut into its runs of one day, in offset order, one block
    each (resuming trusts max(_offset) per partition, so a partition's blocks go in in
    order)."""
    raw = [(chunk, keep) for chunk, keep in raw if keep.size]
    days = [chunk.heads.ts[keep] // DAY_MS for chunk, keep in raw]
    if len({int(d[0]) for d in days}) == 1 and all((d == d[0]).all() for d in days):
        return [raw] if raw else []
    blocks = []
    for (chunk, keep), day in zip(raw, days, strict=True):
        part = chunk.partitions[keep]
        for p in _first_come(part, order=True):
            mine = part == p
            rows, day_ = keep[mine], day[mine]
            for run in np.split(rows, np.flatnonzero(day_[1:] != day_[:-1]) + 1):
                blocks.append([(chunk, run)])
    return blocks


def _first_come(partitions: np.ndarray, order: bool = False):
    """The partitions of `partitions` in the order they first come (order=True), or a
    rank by that order indexed by partition number."""
    runs = partitions[np.flatnonzero(partitions[1:] != partitions[:-1]) + 1].tolist()
    first = list(dict.fromkeys([int(partitions[0]), *runs]))
    if order:
        return first
    rank = np.zeros(max(first) + 1, np.int64)
    rank[first] = np.arange(len(first))
    return rank


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
