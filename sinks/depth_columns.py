"""keel.depth values -> their heads as columns, a whole batch at a time, with every
record's shape checked to its last byte (the ClickHouse sink's decode of depth).

The levels of a depth update are never decoded in Python: ClickHouse reads the bodies
itself (sinks/depth_avro.py). Python needs only each record's pair, update ids, time and
snapshot flag (replays are dropped and blocks cut at day boundaries by them), and the
certainty that ClickHouse will read each body as exactly that record: many records share
one Avro block there, and a record one byte short would otherwise eat its neighbour's
bytes without an error. So the whole shape is walked here with array operations, one
field (or one price level) of every record at a time, as sinks/event_columns.py reads
events: a record takes this path only when it carries the current writer's header, its
pair is ASCII, every varint fits 64 bits, the flag is one byte 0 or 1, the update ids are
non-negative, and its level arrays end exactly at the record's end. Anything else goes
through the codec, which decodes it or says why not (keel.dlq).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.catalog import default_catalog
from sinks.event_columns import _pair_names, _varints, _zigzag

HEADER_LEN = 10
_MAX_ID = 1 << 62                    # (last_update_id, is_snapshot) packs into one int64


def _fast_layout() -> bool:
    """The reading below is written for this exact shape of DepthUpdate."""
    raw = default_catalog().schema("depth_update").raw
    shape = [(f["name"], f["type"] if isinstance(f["type"], str) else f["type"]["type"])
             for f in raw["fields"]]
    level = raw["fields"][5]["type"]["items"]
    return (shape == [("pair", "string"), ("first_update_id", "long"),
                      ("last_update_id", "long"), ("ts", "long"), ("is_snapshot", "boolean"),
                      ("bids", "array"), ("asks", "array")]
            and [(f["name"], f["type"]) for f in level["fields"]] == [("price", "long"),
                                                                    ("qty", "long")])


FAST = _fast_layout()


@dataclass
class DepthHeads:
    """Columns of the records that passed, in their order (`index` into the input)."""
    index: np.ndarray          # int64 position in the values given
    pairs: list[str]           # pair code -> name
    pair: np.ndarray           # int64 pair code
    first: np.ndarray          # int64 first_update_id
    last: np.ndarray           # int64 last_update_id
    ts: np.ndarray             # int64 ms
    snapshot: np.ndarray       # bool
    levels: np.ndarray         # int64 bids + asks

    def __len__(self) -> int:
        return len(self.index)

    def mark(self) -> np.ndarray:
        """(last_update_id, is_snapshot) as one int64 that orders the same way."""
        return self.last * 2 + self.snapshot


def read(values: list, header: bytes) -> DepthHeads:
    """Heads of the records of `values` that take the fast path (see the module doc);
    the others are left out and must go through the codec."""
    k = len(values)
    if not FAST or not k:
        return _empty()
    lens = np.fromiter(map(len, values), np.int64, count=k)
    buf = np.frombuffer(b"".join(values), np.uint8)
    if not len(buf):
        return _empty()
    ends = np.cumsum(lens)
    starts = ends - lens
    ok = lens >= HEADER_LEN + 7      # header, pair length, 3 longs, flag, two array ends
    head = np.minimum(starts[:, None] + np.arange(HEADER_LEN), len(buf) - 1)
    ok &= (buf[head] == np.frombuffer(header, np.uint8)).all(axis=1)
    at = starts + HEADER_LEN
    first_byte = buf[np.minimum(at, len(buf) - 1)].astype(np.int64)
    ok &= (first_byte < 0x80) & (first_byte & 1 == 0)      # a length under 64
    length = np.where(ok, first_byte >> 1, 0)
    pair_at = at + 1
    at = pair_at + length
    cols = []
    for _ in range(3):
        raw, at, _ = _varints(buf, at, ok)
        cols.append(_zigzag(raw))
    first, last, ts = cols
    ok &= (first >= 0) & (last >= 0) & (last < _MAX_ID)
    flag = buf[np.minimum(at, len(buf) - 1)]
    ok &= flag <= 1
    at = at + 1
    ok &= at <= ends
    levels = np.zeros(k, np.int64)
    stops = np.flatnonzero(buf < 0x80)
    arrays_at = at
    for _ in range(2):                                     # bids, then asks
        at = _skip_array(buf, at, ends, ok, levels, stops)
    ok &= at == ends
    _long_varints(stops, ends, arrays_at, ok)
    names, pair = _pair_names(buf, pair_at, length, ok)
    rows = np.flatnonzero(ok)
    return DepthHeads(rows, names, pair[rows], first[rows], last[rows], ts[rows],
                      flag[rows] == 1, levels[rows])


def _skip_array(buf, at, ends, ok, levels, stops) -> np.ndarray:
    """Walk one Avro array of (long, long) items in every record still ok; returns the
    positions after it. The items are not read one by one: a block of n items is 2n
    varints, so it ends right after the 2n-th byte under 0x80 (`stops`) from its start.
    A count that cannot fit the bytes left fails the record (and bounds the walk)."""
    at = at.copy()
    rows = np.flatnonzero(ok)
    while rows.size:                                # one array block per round
        raw, after, _ = _varints(buf, at[rows], ok, rows)
        count = _zigzag(raw)
        at[rows] = after
        negative = count < 0
        if negative.any():                          # a block that gives its byte size
            neg = rows[negative]
            _, after, _ = _varints(buf, at[neg], ok, neg)
            at[neg] = after
            count = np.abs(count)
        # At least two bytes an item; abs(INT64_MIN) stays negative.
        ok[rows[(count < 0) | (count > (ends[rows] - at[rows]) // 2)]] = False
        going = (count > 0) & ok[rows]              # a count of 0 ends the array
        rows, count = rows[going], count[going]
        if not rows.size:
            break
        levels[rows] += count
        last = np.searchsorted(stops, at[rows]) + 2 * count - 1
        inside = last < len(stops)
        ok[rows[~inside]] = False
        rows, last = rows[inside], last[inside]
        at[rows] = stops[last] + 1
        ok[rows[at[rows] > ends[rows]]] = False
        rows = rows[ok[rows]]
    return at


def _long_varints(stops, ends, arrays_at, ok) -> None:
    """Fail records with a varint of 10 bytes or more among their levels: the walk above
    counts varints without reading them, and only a value of 2^62 or more needs that
    many bytes (the codec then decides, and says why if it is an overlong varint)."""
    gaps = np.flatnonzero(np.diff(stops) >= 10)
    if not gaps.size:
        return
    first = stops[gaps] + 1                          # where each such varint starts
    rec = np.searchsorted(ends, first, side="right")
    inside = rec < len(ends)
    rec, first = rec[inside], first[inside]
    ok[rec[first >= arrays_at[rec]]] = False


def _empty() -> DepthHeads:
    z = np.zeros(0, np.int64)
    return DepthHeads(z, [], z, z, z, z, np.zeros(0, bool), z)
