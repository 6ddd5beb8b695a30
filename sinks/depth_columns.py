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
from sinks.event_columns import _pair_names, _varints, _words_at, _zigzag, varint_values

try:
    from sinks import _depth as _compiled
except ImportError:                  # no C compiler when Keel was installed
    _compiled = None

HEADER_LEN = 10
# Records read at once: past this the arrays outgrow the caches and every record costs
# more (1.0 us at 10-20k, 1.5 at 50k, 1.6-2.9 at 100k, measured; since the levels are
# read in 32 bits, 8k: 1.44 us against 1.58 at 16k and 1.59 at 4k, 200k bench records,
# medians of 11 alternated runs, load 3-4).
CHUNK = 8_192
_MAX_ID = 1 << 62                    # (last_update_id, is_snapshot) packs into one int64


class _Words(dict):
    """header -> its first 8 bytes and its last 2 as little-endian words."""

    def __missing__(self, header: bytes) -> tuple[np.uint64, np.uint64]:
        assert len(header) == HEADER_LEN
        got = self[header] = (np.uint64(int.from_bytes(header[:8], "little")),
                              np.uint64(int.from_bytes(header[8:], "little")))
        return got


_HEAD = _Words()


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

    def take(self, rows: np.ndarray, runs: np.ndarray | None = None) -> Levels:
        """The levels of the records `rows` (ascending or not), in that order; `runs`:
        where rows holds runs of consecutive records (see _runs), if few."""
        if len(rows) == len(self.count) and (rows == np.arange(len(rows))).all():
            return self
        count = self.count[rows]
        first = np.cumsum(self.count) - self.count
        if runs is not None:
            # A slice a run: copies, no index a level.
            cut = np.split(rows, runs)
            start, end = first[[c[0] for c in cut]], first[[c[-1] for c in cut]]
            end += self.count[[c[-1] for c in cut]]
            spans = [slice(s, e) for s, e in zip(start.tolist(), end.tolist(), strict=True)]
            return Levels(count, np.concatenate([self.price[s] for s in spans]),
                          np.concatenate([self.qty[s] for s in spans]))
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
        runs = _runs(rows)
        return DepthHeads(self.index[rows], self.pairs, self.pair[rows], self.first[rows],
                          self.last[rows], self.ts[rows], self.snapshot[rows],
                          self.bids.take(rows, runs), self.asks.take(rows, runs))

    def mark(self) -> np.ndarray:
        """(last_update_id, is_snapshot) as one int64 that orders the same way."""
        return self.last * 2 + self.snapshot


def _runs(rows: np.ndarray) -> np.ndarray | None:
    """Where `rows` breaks into runs of consecutive numbers (np.split points), when its
    runs are long (a batch reordered by pair: partitions come in long runs as polled),
    else None."""
    if len(rows) < 64:
        return None
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return breaks if len(breaks) * 64 < len(rows) else None


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
    the others are left out and must go through the codec. sinks/_depth.c reads them
    when it was built (the same records, ~10x less CPU, and without the GIL), else the
    array operations below."""
    if not FAST or not len(values):
        return _empty()
    if _compiled is not None:
        return _read_compiled(values, header)
    return read_arrays(values, header)


def _read_compiled(values: list, header: bytes) -> DepthHeads:
    (index, names, pair, first, last, ts, snapshot, bid_count, bid_price, bid_qty,
     ask_count, ask_price, ask_qty) = _compiled.read(values, header)

    def col(raw: bytes) -> np.ndarray:
        return np.frombuffer(raw, np.int64)
    return DepthHeads(col(index), names, col(pair), col(first), col(last), col(ts),
                      col(snapshot).astype(bool),
                      Levels(col(bid_count), col(bid_price), col(bid_qty)),
                      Levels(col(ask_count), col(ask_price), col(ask_qty)))


def read_arrays(values: list, header: bytes) -> DepthHeads:
    """read() by numpy array operations (the reader when sinks/_depth.c was not built)."""
    k = len(values)
    if not FAST or not k:
        return _empty()
    if k > CHUNK:
        parts = []
        for at in range(0, k, CHUNK):
            part = read_arrays(values[at:at + CHUNK], header)
            part.index = part.index + at
            parts.append(part)
        return concat(parts)
    lens = np.fromiter(map(len, values), np.int64, count=k)
    ends = np.cumsum(lens)
    size = int(ends[-1])
    if not size:
        return _empty()
    # As event_columns.padded, but the padding joined with the values: one copy.
    full = np.frombuffer(b"".join([*values, bytes(16 - size % 8)]), np.uint8)
    buf, words = full[:size], full.view("<u8")
    starts = ends - lens
    ok = lens >= HEADER_LEN + 7      # header, pair length, 3 longs, flag, two array ends
    # The header by words (its 8 bytes, then its last 2 masked): no byte matrix.
    last_at = len(buf) - 1
    ok &= _words_at(words, np.minimum(starts, last_at)) == _HEAD[header][0]
    word = _words_at(words, np.minimum(starts + 8, last_at))
    word &= np.uint64(0xFFFF)
    ok &= word == _HEAD[header][1]
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
    arrays_at = at
    # The number of the varint at `at` (how many end before it): one binary search a
    # record here; the walk then counts on from it (a cumsum over every byte cost more).
    tok = np.searchsorted(stops, at)
    blocks = []
    for _ in range(2):                                     # bids, then asks
        at, tok, found = _skip_array(buf, at, tok, ends, ok, stops)
        blocks.append(found)
    ok &= at == ends
    gaps = _gaps(stops)
    _long_varints(stops, gaps, ends, arrays_at, ok)
    names, pair = _pairs(buf, words, pair_at, length, ok)
    rows = np.flatnonzero(ok)
    quads = _quads(words)
    bids, asks = (_levels(buf, words, quads, stops, gaps, found, ok, rows)
                  for found in blocks)
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


def _levels(buf, words, quads, stops, gaps, found, ok, rows) -> Levels:
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
    value = _read_varints(buf, words, quads, stops, gaps, tok, 2 * n)  # price, qty, ...
    return Levels(count[rows], value[0::2].astype(np.int64), value[1::2].astype(np.int64))


def _read_varints(buf, words, quads, stops, gaps, first, count) -> np.ndarray:
    """Values (zigzag decoded) of `count` varints from the varint numbered `first`, block
    after block (varint i ends at stops[i], gaps[i] bytes after the one before it ends),
    each of at most 9 bytes: int32 when all are under 5 bytes, else int64."""
    token = _ranges(first, count)
    end = np.take(stops, token)
    less = np.take(gaps, token)          # bytes of each varint before its last
    start = end - less
    if less.size and int(less.max()) <= 3:
        return _short_values(quads, start, less)
    return _zigzag(varint_values(buf, words, start, less + 1))


_MASK4 = np.array([0x7F, 0x7F7F, 0x7F7F7F, 0x7F7F7F7F], np.uint32)


def _short_values(quads, start, less) -> np.ndarray:
    """Zigzag-decoded int32 values of varints of 1 to 4 bytes (`less` + 1) at `start`:
    one gather of the word holding them (quads: a word at every 4th byte), the 7-bit
    groups packed in 32 bits by two subtractions (no masks and ors), against two
    gathers and three rounds of masks and shifts in 64 bits for any varint."""
    x = np.take(quads, start >> 2)
    x >>= ((start & 3) << 3).view(np.uint64)
    v = x.astype(np.uint32)
    v &= np.take(_MASK4, less)
    # b0 + b1 2^8 + b2 2^16 + b3 2^24 -> g0 + g1 2^16 (g0 = b0 + b1 2^7, g1 likewise)
    t = v & 0x7F007F00
    t >>= 1
    v -= t
    # -> g0 + g1 2^14
    np.right_shift(v, 16, out=t)
    t *= 0xC000
    v -= t
    np.bitwise_and(v, 1, out=t)
    np.negative(t, out=t)
    v >>= 1
    v ^= t
    return v.view(np.int32)


def _quads(words: np.ndarray) -> np.ndarray:
    """The padded blob (see padded) as little-endian words starting at every 4th byte:
    any 5 bytes from a position p lie in word p >> 2."""
    out = np.empty(2 * len(words) - 1, np.uint64)
    out[0::2] = words
    out[1::2] = words.view(np.uint8)[4:8 * len(words) - 4].view("<u8")
    return out


def _gaps(stops: np.ndarray) -> np.ndarray:
    """Per varint (numbered by its end in stops), how many bytes come before its last:
    its length - 1 (the first varint starts at byte 0)."""
    out = np.empty_like(stops)
    out[:1] = stops[:1]
    np.subtract(stops[1:], stops[:-1], out=out[1:])
    out[1:] -= 1
    return out


def _ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """first[0], first[0]+1, .. (count[0] of them), then first[1], .. : one array."""
    total = int(count.sum())
    if not total:
        return np.zeros(0, np.int64)
    starts = np.cumsum(count) - count
    return np.arange(total) + np.repeat(first - starts, count)


def _skip_array(buf, at, tok, ends, ok, stops) -> tuple[np.ndarray, np.ndarray, list]:
    """Walk one Avro array of (long, long) items in every record still ok, from `at`,
    the varint numbered `tok` (varint i ends at stops[i]); returns the positions after
    it and the numbers of the varints there (both only for the records still ok), and
    its blocks (per round: records, number of the first item's varint, item count).
    The items are not read here: a block of n items is 2n varints, so it ends right
    after the 2n-th byte under 0x80 (`stops`) from its start. A count that cannot fit
    the bytes left fails the record (and bounds the walk): a count that fits was read
    whole, so it was one varint. The records still walking are kept as dense arrays
    (`a`, `t`, `e` of `rows`), not picked out of whole ones every step."""
    at = at.copy()
    tok = tok.copy()
    found = []
    rows = np.flatnonzero(ok)
    a, t, e = at[rows], tok[rows], ends[rows]
    while rows.size:                                # one array block per round
        raw, a, _ = _varints(buf, a, ok, rows)
        count = _zigzag(raw)
        t += 1
        negative = count < 0
        if negative.any():                          # a block that gives its byte size
            neg = np.flatnonzero(negative)
            _, after, _ = _varints(buf, a[neg], ok, rows[neg])
            a[neg] = after
            t[neg] += 1
            count = np.abs(count)
        # At least two bytes an item; abs(INT64_MIN) stays negative.
        ok[rows[(count < 0) | (count > (e - a) >> 1)]] = False
        live = ok[rows]
        end = count == 0                            # a count of 0 ends the array
        if end.any():
            done = np.flatnonzero(end & live)
            at[rows[done]] = a[done]
            tok[rows[done]] = t[done]
        going = np.flatnonzero(live & ~end)
        if going.size < rows.size:
            rows, count, a, t, e = rows[going], count[going], a[going], t[going], e[going]
        if not rows.size:
            break
        found.append((rows, t, count))
        last = t + 2 * count - 1
        inside = last < len(stops)
        if not inside.all():
            ok[rows[~inside]] = False
            rows, count, t, e, last = rows[inside], count[inside], t[inside], e[inside], \
                last[inside]
        a = stops[last] + 1
        t = last + 1
        over = a > e
        if over.any():
            ok[rows[over]] = False
            keep = ~over
            rows, a, t, e = rows[keep], a[keep], t[keep], e[keep]
    return at, tok, found


def _long_varints(stops, gaps, ends, arrays_at, ok) -> None:
    """Fail records with a varint of 10 bytes or more among their levels: the walk above
    counts varints without reading them, and only a value of 2^62 or more needs that
    many bytes (the codec then decides, and says why if it is an overlong varint)."""
    gaps = np.flatnonzero(gaps[1:] >= 9)
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
