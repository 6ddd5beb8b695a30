"""keel.depth values -> columns, a whole batch at a time, with every record's shape
checked to its last byte (the ClickHouse sink's decode of depth).

fastavro and a dict per price level cost far more than the insert, so records are read
here with array operations, one field of every record at a time, as sinks/event_columns.py
reads events, into head columns (pair, update ids, time, snapshot flag: replays are
dropped and blocks cut at day boundaries by them) and each side's levels as one flat
price and qty array with a count per record (sinks/depth_native.py hands them to
ClickHouse as they are). The level arrays are walked block by block: a block of n items
is 2n varints, so it ends right after the 2n-th byte under 0x80 from its start; the
items' varints are read only once the walk has vouched for the record. A record takes
this path only when it carries the current writer's header, its pair is ASCII, every
varint fits 64 bits (a level's, 63), the flag is one byte 0 or 1, the update ids are
non-negative, and its level arrays end exactly at the record's end. Anything else goes
through the codec, which decodes it or says why not (keel.dlq).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.catalog import default_catalog
from sinks.event_columns import _pair_names, _varints, _zigzag, padded, varint_values

HEADER_LEN = 10
# Records read at once: past this the arrays outgrow the caches and every record costs
# more (1.0 us at 10-20k, 1.5 at 50k, 1.6-2.9 at 100k, measured).
CHUNK = 16_384
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
class Levels:
    """One side's price levels of every record: `count` per record, and the flat
    `price` and `qty` of all of them, record after record, best first."""
    count: np.ndarray          # int64 per record
    price: np.ndarray          # int64, count.sum() of them
    qty: np.ndarray

    def take(self, rows: np.ndarray) -> Levels:
        """The levels of the records `rows` (ascending or not), in that order."""
        if len(rows) == len(self.count) and (rows == np.arange(len(rows))).all():
            return self
        count = self.count[rows]
        first = np.cumsum(self.count) - self.count
        flat = _ranges(first[rows], count)
        return Levels(count, self.price[flat], self.qty[flat])


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
    bids: Levels
    asks: Levels

    def __len__(self) -> int:
        return len(self.index)

    @property
    def levels(self) -> np.ndarray:
        """int64 bids + asks per record."""
        return self.bids.count + self.asks.count

    def take(self, rows: np.ndarray) -> DepthHeads:
        """The records `rows` (positions in these heads), in that order."""
        if len(rows) == len(self) and (rows == np.arange(len(rows))).all():
            return self
        return DepthHeads(self.index[rows], self.pairs, self.pair[rows], self.first[rows],
                          self.last[rows], self.ts[rows], self.snapshot[rows],
                          self.bids.take(rows), self.asks.take(rows))

    def mark(self) -> np.ndarray:
        """(last_update_id, is_snapshot) as one int64 that orders the same way."""
        return self.last * 2 + self.snapshot


def concat(parts: list[DepthHeads]) -> DepthHeads:
    """Heads one after another (pair codes merged; `index` is each part's own)."""
    if len(parts) == 1:
        return parts[0]
    names: dict[str, int] = {}
    pair = []
    for h in parts:
        recode = np.array([names.setdefault(n, len(names)) for n in h.pairs] or [0], np.int64)
        pair.append(recode[h.pair])
    cat = np.concatenate

    def side(which: str) -> Levels:
        got = [getattr(h, which) for h in parts]
        return Levels(cat([g.count for g in got]), cat([g.price for g in got]),
                      cat([g.qty for g in got]))
    return DepthHeads(cat([h.index for h in parts]), list(names), cat(pair),
                      cat([h.first for h in parts]), cat([h.last for h in parts]),
                      cat([h.ts for h in parts]), cat([h.snapshot for h in parts]),
                      side("bids"), side("asks"))


def read(values: list, header: bytes) -> DepthHeads:
    """Heads of the records of `values` that take the fast path (see the module doc);
    the others are left out and must go through the codec."""
    k = len(values)
    if not FAST or not k:
        return _empty()
    if k > CHUNK:
        parts = []
        for at in range(0, k, CHUNK):
            part = read(values[at:at + CHUNK], header)
            part.index = part.index + at
            parts.append(part)
        return concat(parts)
    lens = np.fromiter(map(len, values), np.int64, count=k)
    buf, words = padded(b"".join(values))
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
    last_byte = buf < 0x80
    stops = np.flatnonzero(last_byte)
    # stops_before[p]: how many varints end before byte p (a searchsorted of p in stops,
    # by one pass over the bytes instead of a binary search a block: 7.7% of the sink's
    # polling thread went to that search).
    # int32 (a chunk is far below 2 GB): half the memory traffic of this pass.
    stops_before = np.zeros(len(buf) + 1, np.int32)
    np.cumsum(last_byte, out=stops_before[1:])
    arrays_at = at
    blocks = []
    for _ in range(2):                                     # bids, then asks
        at, found = _skip_array(buf, at, ends, ok, stops, stops_before)
        blocks.append(found)
    ok &= at == ends
    _long_varints(stops, ends, arrays_at, ok)
    names, pair = _pairs(buf, words, pair_at, length, ok)
    rows = np.flatnonzero(ok)
    bids, asks = (_levels(buf, words, stops, found, ok, rows) for found in blocks)
    return DepthHeads(rows, names, pair[rows], first[rows], last[rows], ts[rows],
                      flag[rows] == 1, bids, asks)


_LOW = np.array([(1 << 8 * n) - 1 for n in range(8)], np.uint64)
_ASCII = np.uint64(0x8080808080808080)


def _pairs(buf, words, start, length, ok) -> tuple[list[str], np.ndarray]:
    """(names, index into names per record), as event_columns._pair_names gives them
    (a name not all ASCII fails its record), but names of up to 7 bytes, as pairs are,
    are read as one word a record (its bytes and length) and coded by that: no byte
    matrix, and no sort when every record has the same pair."""
    rows = np.flatnonzero(ok)
    if not rows.size or int(length[rows].max()) > 7:
        return _pair_names(buf, start, length, ok)
    s, n = start[rows], length[rows]
    shift = ((s & 7) << 3).astype(np.uint64)
    key = np.take(words, s >> 3) >> shift
    key |= np.take(words, (s >> 3) + 1) << (np.uint64(64) - shift)   # a shift by 64: 0
    key &= np.take(_LOW, n)
    ascii_ = (key & _ASCII) == 0
    key |= n.astype(np.uint64) << np.uint64(56)            # "A" and "A\0" differ
    if not ascii_.all():
        ok[rows[~ascii_]] = False
        rows, key = rows[ascii_], key[ascii_]
    index = np.zeros(len(start), np.int64)
    if not rows.size:
        return [], index
    if (key == key[0]).all():
        uniq = key[:1]
    else:
        uniq, inverse = np.unique(key, return_inverse=True)
        index[rows] = inverse
    names = [int(k).to_bytes(8, "little")[:int(k) >> 56].decode("ascii")
             for k in uniq.tolist()]
    return names, index


def _levels(buf, words, stops, found, ok, rows) -> Levels:
    """Read the (price, qty) items of the array blocks `found` (per round of the walk:
    records, first item's varint number, item count) of the records `rows`, which all
    passed the walk: every varint among them ends at a stop and is under 10 bytes."""
    count = np.zeros(len(ok), np.int64)
    if len(found) == 1:
        # Every array in one block, as writers make them: the records come in order,
        # once each (no sort, no scatter-add).
        rec, tok, n = found[0]
        keep = ok[rec]
        rec, tok, n = rec[keep], tok[keep], n[keep]
        count[rec] = n
    else:
        rec = np.concatenate([r for r, _, _ in found] + [np.zeros(0, np.int64)])
        tok = np.concatenate([t for _, t, _ in found] + [np.zeros(0, np.int64)])
        n = np.concatenate([c for _, _, c in found] + [np.zeros(0, np.int64)])
        keep = ok[rec]
        rec, tok, n = rec[keep], tok[keep], n[keep]
        order = np.argsort(rec, kind="stable")   # record order; a record's blocks in turn
        rec, tok, n = rec[order], tok[order], n[order]
        np.add.at(count, rec, n)
    value = _zigzag(_read_varints(buf, words, stops, tok, 2 * n))   # price, qty, price, ...
    return Levels(count[rows], value[0::2], value[1::2])


def _read_varints(buf, words, stops, first, count) -> np.ndarray:
    """Raw values of `count` varints from the varint numbered `first`, block after block
    (varint i ends at stops[i]), each of at most 9 bytes."""
    end = stops[_ranges(first, count)]
    # A varint starts right after the one before it; only each block's first needs the
    # end of a varint outside the block.
    start = np.empty_like(end)
    start[1:] = end[:-1] + 1
    start[np.cumsum(count) - count] = np.where(first > 0, stops[np.maximum(first - 1, 0)] + 1, 0)
    return varint_values(buf, words, start, end - start + 1)


def _ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """first[0], first[0]+1, .. (count[0] of them), then first[1], .. : one array."""
    total = int(count.sum())
    if not total:
        return np.zeros(0, np.int64)
    starts = np.cumsum(count) - count
    return np.arange(total) + np.repeat(first - starts, count)


def _skip_array(buf, at, ends, ok, stops, stops_before) -> tuple[np.ndarray, list]:
    """Walk one Avro array of (long, long) items in every record still ok; returns the
    positions after it and its blocks (per round: records, number of the first item's
    varint, item count). The items are not read here: a block of n items is 2n
    varints, so it ends right after the 2n-th byte under 0x80 (`stops`) from its start.
    A count that cannot fit the bytes left fails the record (and bounds the walk)."""
    at = at.copy()
    found = []
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
        tok = stops_before[at[rows]].astype(np.int64)
        found.append((rows, tok, count))
        last = tok + 2 * count - 1
        inside = last < len(stops)
        ok[rows[~inside]] = False
        rows, last = rows[inside], last[inside]
        at[rows] = stops[last] + 1
        ok[rows[at[rows] > ends[rows]]] = False
        rows = rows[ok[rows]]
    return at, found


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
    return DepthHeads(z, [], z, z, z, z, np.zeros(0, bool), Levels(z, z, z), Levels(z, z, z))
