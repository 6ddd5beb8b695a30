"""keel.events values -> columns, a whole batch at a time (the PostgreSQL sink's decode).

fastavro takes ~4.5 us per engine event and the NamedTuple it becomes costs as much again
to fold; at the sink's target rate that alone fills a core. But every field of an engine
event except the pair is an Avro long or int (a zigzag varint) or a boolean (one byte),
so a batch is read with array operations one field at a time across all its records:
gather each record's next byte, add the 7-bit groups of the few varints that continue,
move every position on (~0.3 us per event against ~4.5). A record is read that way only
when it carries the current writer's single-object header and its shape checks out
exactly (pair of ASCII bytes under 64, a known union branch, as many varints as that
branch has fields, none longer than 64 bits, ending exactly at the record's end). Anything else -- an older writer version,
registry framing, a truncated or odd record -- goes through the codec one record at a
time, which decodes it or says why not (keel.dlq). Both paths give the same columns.

Columns keep the schema's order: `fields[:, j]` is the j-th field of the event's branch
(KINDS), 0 past the branch's last field; booleans are 0/1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.domain import EVENT_TYPES
from schemas.catalog import default_catalog
from schemas.codec import MARKER, Codec, CodecError, CodecFault, RegistryUnavailable

_HEADER_LEN = len(MARKER) + 8
_MAX_PAIR = 64                       # longer pair names take the codec path


def _layout():
    raw = default_catalog().schema("engine_event").raw
    envelope = [(f["name"], f["type"]) for f in raw["fields"][:3]]
    branches = raw["fields"][3]["type"]
    kinds = tuple(b["name"] for b in branches)
    fields = {b["name"]: tuple(f["name"] for f in b["fields"]) for b in branches}
    types = {b["name"]: tuple(f["type"] for f in b["fields"]) for b in branches}
    fast = (envelope == [("pair", "string"), ("seq", "long"), ("ts", "long")]
            and all(t in ("long", "int", "boolean") for ts in types.values() for t in ts))
    return kinds, fields, types, fast


KINDS, FIELDS, _TYPES, FAST = _layout()
KIND = {name: i for i, name in enumerate(KINDS)}
MAX_FIELDS = max(len(f) for f in FIELDS.values())
_N_FIELDS = np.array([len(FIELDS[k]) for k in KINDS], np.int64)
_TYPE_OF = {cls.__name__: cls for cls in EVENT_TYPES}
_KIND_OF_TYPE = {cls: KIND[cls.__name__] for cls in EVENT_TYPES if cls.__name__ in KIND}
# Enumerations the sinks store as smallint: a value outside it is an invalid record.
SMALLINT_FIELDS = (("Accepted", "side"), ("Accepted", "kind"), ("Accepted", "tif"),
                   ("Trade", "taker_side"))
_INT32, _INT16 = (-(1 << 31), (1 << 31) - 1), (-(1 << 15), (1 << 15) - 1)


def col(kind: str, name: str) -> int:
    """Column of field `name` of branch `kind` in EventColumns.fields."""
    return FIELDS[kind].index(name)


@dataclass
class EventColumns:
    pairs: list[str]          # pair code -> pair name
    pair: np.ndarray          # int64 pair code per event
    seq: np.ndarray           # int64
    ts: np.ndarray            # int64
    kind: np.ndarray          # int64 branch index (KINDS)
    fields: np.ndarray        # (n, MAX_FIELDS) int64

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, which) -> EventColumns:
        """The events selected by a boolean mask or an index array, in that order."""
        return EventColumns(self.pairs, self.pair[which], self.seq[which], self.ts[which],
                            self.kind[which], self.fields[which])

    def events(self) -> list:
        """Back to engine.domain events (for tests and the reference fold)."""
        out = []
        for p, s, t, k, f in zip(self.pair.tolist(), self.seq.tolist(), self.ts.tolist(),
                                 self.kind.tolist(), self.fields.tolist(), strict=True):
            name = KINDS[k]
            values = f[:len(FIELDS[name])]
            values = [bool(v) if ty == "boolean" else v
                      for v, ty in zip(values, _TYPES[name], strict=True)]
            out.append(_TYPE_OF[name](self.pairs[p], s, t, *values))
        return out

    @classmethod
    def empty(cls) -> EventColumns:
        z = np.zeros(0, np.int64)
        return cls([], z, z, z, z, np.zeros((0, MAX_FIELDS), np.int64))


def decode(values: list, codec: Codec) -> tuple[EventColumns, list[tuple[int, CodecError]]]:
    """(columns of the decodable records in their order, [(index, error)] of the rest).

    RegistryUnavailable is raised, not returned: the records are not at fault.
    """
    n = len(values)
    good = np.zeros(n, bool)
    codes: dict[str, int] = {}
    slow = np.ones(n, bool)
    cols = None
    if FAST and codec.registry is None and n:
        header = MARKER + codec.catalog.current["engine_event"].fingerprint
        idx, ok, cols, names = _fast(values, header)
        hit = idx[ok]
        mapping = np.array([codes.setdefault(name, len(codes)) for name in names], np.int64)
    if cols is not None and len(hit) == n:
        # Every record took the fast path (the usual batch): its arrays are the columns,
        # not copied into zeroed ones row by row.
        pair = mapping[cols[0]]
        seq, ts, kind, fields = cols[1:]
        good[:] = True
        slow[:] = False
    else:
        pair = np.zeros(n, np.int64)
        seq = np.zeros(n, np.int64)
        ts = np.zeros(n, np.int64)
        kind = np.zeros(n, np.int64)
        fields = np.zeros((n, MAX_FIELDS), np.int64)
        if cols is not None and len(hit):
            pair[hit] = mapping[cols[0][ok]]
            seq[hit], ts[hit], kind[hit] = cols[1][ok], cols[2][ok], cols[3][ok]
            fields[hit] = cols[4][ok]
            good[hit] = True
            slow[hit] = False
    dead: list[tuple[int, CodecError]] = []
    for i in np.flatnonzero(slow).tolist():
        try:
            e = codec.decode_event(values[i])
        except RegistryUnavailable:
            raise
        except CodecError as exc:
            dead.append((i, exc))
            continue
        k = _KIND_OF_TYPE[type(e)]
        pair[i], seq[i], ts[i], kind[i] = codes.setdefault(e.pair, len(codes)), e.seq, e.ts, k
        body = [int(v) for v in e[3:]]
        fields[i, :len(body)] = body
        good[i] = True
    _check_ranges(kind, fields, good, dead)
    names = [""] * len(codes)
    for name, code in codes.items():
        names[code] = name
    dead.sort(key=lambda d: d[0])
    out = EventColumns(names, pair, seq, ts, kind, fields)
    return (out if good.all() else out.take(good)), dead


def _check_ranges(kind, fields, good, dead) -> None:
    """Avro ints are 32-bit, the sinks' enumerations 16-bit: outside means invalid."""
    for name, types in _TYPES.items():
        rows = good & (kind == KIND[name])
        if not rows.any():
            continue
        for j, (field, ty) in enumerate(zip(FIELDS[name], types, strict=True)):
            lo, hi = _INT16 if (name, field) in SMALLINT_FIELDS else _INT32
            if ty == "long" and (name, field) not in SMALLINT_FIELDS:
                continue
            out = rows & ((fields[:, j] < lo) | (fields[:, j] > hi))
            for i in np.flatnonzero(out).tolist():
                good[i] = False
                dead.append((i, CodecError(CodecFault.INVALID_RECORD,
                                           f"engine_event: {name}.{field} = {fields[i, j]} "
                                           f"is out of range [{lo}, {hi}]")))


def _fast(values: list, header: bytes):
    """Read the records by array operations, one field of every record at a time.

    Returns (indices into values, ok mask, (pair index into names, seq, ts, kind,
    fields), names); rows not ok are garbage and must take the codec path.
    """
    idx = np.arange(len(values))
    try:
        lens = np.fromiter(map(len, values), np.int64, count=len(values))
        blob = b"".join(values)
    except TypeError:                     # a tombstone (None) among them: codec path
        idx = np.array([i for i, v in enumerate(values) if type(v) is bytes], np.int64)
        values = [values[i] for i in idx.tolist()]
        lens = np.fromiter(map(len, values), np.int64, count=len(values))
        blob = b"".join(values)
    k = len(values)
    if not k or not blob:
        return idx, np.zeros(k, bool), (None,) * 5, []
    buf, words = padded(blob)
    ends = np.cumsum(lens)
    starts = ends - lens
    ok = lens >= _HEADER_LEN + 4
    # The header by words, not bytes: its first 8 bytes are one word a record, the rest
    # a masked second word (a gathered byte matrix and a row-wise all() cost ~3x more).
    last = len(buf) - 1
    for offset in range(0, len(header), 8):
        part = header[offset:offset + 8]
        word = _words_at(words, np.minimum(starts + offset, last))
        if len(part) < 8:
            word &= _LOW_BYTES[len(part)]
        ok &= word == np.uint64(int.from_bytes(part, "little"))
    # The pair's length: one byte (a name under 64 bytes), zigzag of a non-negative int.
    at = starts + _HEADER_LEN
    first = buf[np.minimum(at, len(buf) - 1)].astype(np.int64)
    ok &= (first < 0x80) & (first & 1 == 0)
    length = np.where(ok, first >> 1, 0)
    pair_at = at + 1
    at = pair_at + length
    raw, at, _ = _varints(buf, at, ok)
    seq = _zigzag(raw)
    raw, at, _ = _varints(buf, at, ok)
    ts = _zigzag(raw)
    raw, at, _ = _varints(buf, at, ok)
    branch = _zigzag(raw)
    ok &= (branch >= 0) & (branch < len(KINDS))
    branch = np.where(ok, branch, 0)
    n_fields = _N_FIELDS[branch]
    fields = np.zeros((k, MAX_FIELDS), np.int64)
    for j in range(MAX_FIELDS):
        rows = np.flatnonzero(ok & (j < n_fields))
        raw, after, size = _varints(buf, at[rows], ok, rows)
        at[rows] = after
        fields[rows, j] = _zigzag(raw)
        for b in _BOOLEANS.get(j, ()):
            # One byte, 0 or 1 (a longer varint of value 1 is not a boolean).
            mine = branch[rows] == b
            ok[rows[mine]] &= (raw[mine] <= 1) & (size[mine] == 1)
            fields[rows[mine], j] = raw[mine].astype(np.int64)
    # Positions only grow: ending exactly at the record's end means no varint ran past
    # it and nothing is left over.
    ok &= at == ends
    # Pair names of up to 7 bytes (every pair) are read and coded as one word a record
    # (the depth read's way: no byte matrix, no sort when the batch has one pair).
    from sinks.depth_columns import _pairs
    names, pair_index = _pairs(buf, words, pair_at, length, ok)
    return idx, ok, (pair_index, seq, ts, branch, fields), names


def _words_at(words: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The 8 bytes from each `start` as a little-endian word (see padded)."""
    shift = ((start & 7) << 3).astype(np.uint64)
    x = np.take(words, start >> 3) >> shift
    x |= np.take(words, (start >> 3) + 1) << (np.uint64(64) - shift)   # a shift by 64: 0
    return x


# field position -> branches with a boolean there
_BOOLEANS: dict[int, list[int]] = {}
for _b, _name in enumerate(KINDS):
    for _j, _ty in enumerate(_TYPES[_name]):
        if _ty == "boolean":
            _BOOLEANS.setdefault(_j, []).append(_b)


def padded(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of blob, the same bytes as aligned little-endian u64 words, zero-padded by
    at least 8 bytes): `varint_values` reads up to 8 bytes of a varint from two words
    instead of one gather a byte."""
    full = np.frombuffer(blob + bytes(16 - len(blob) % 8), np.uint8)
    return full[:len(blob)], full.view("<u8")


_LOW_BYTES = np.array([(1 << 8 * n) - 1 for n in range(9)], np.uint64)
_U = np.uint64


def varint_values(buf: np.ndarray, words: np.ndarray, start: np.ndarray,
                  size: np.ndarray) -> np.ndarray:
    """Raw values of the varints at `start`, `size` bytes each (1 to 9, known already:
    the caller found where each ends). The first 8 bytes come in one word; their 7-bit
    groups are packed by three rounds of shifts (pairs of bytes, of 14-bit groups, of
    28-bit groups) instead of one gather a byte."""
    # The 8 bytes from `start`: the aligned word holding it, shifted down, and the next
    # one's low bytes shifted up (numpy gives 0 for a shift by 64). Two aligned gathers:
    # a u64 view at every byte offset was slower (unaligned gathers, 49% of the read).
    at = start >> 3
    shift = ((start & 7) << 3).astype(np.uint64)
    x = np.take(words, at) >> shift
    x |= np.take(words, at + 1) << (_U(64) - shift)
    x &= np.take(_LOW_BYTES, np.minimum(size, 8))
    x &= _U(0x7F7F7F7F7F7F7F7F)
    t = x & _U(0x7F007F007F007F00)
    x &= _U(0x007F007F007F007F)
    x |= t >> _U(1)
    np.bitwise_and(x, _U(0x3FFF00003FFF0000), out=t)
    x &= _U(0x00003FFF00003FFF)
    x |= t >> _U(2)
    np.bitwise_and(x, _U(0x0FFFFFFF00000000), out=t)
    x &= _U(0x000000000FFFFFFF)
    x |= t >> _U(4)
    nine = np.flatnonzero(size > 8)
    if nine.size:
        x[nine] |= (buf[start[nine] + 8] & 0x7F).astype(np.uint64) << _U(56)
    return x


def _zigzag(raw: np.ndarray) -> np.ndarray:
    return (raw >> np.uint64(1)).view(np.int64) ^ -(raw & np.uint64(1)).view(np.int64)


def _varints(buf: np.ndarray, at: np.ndarray, ok: np.ndarray, rows: np.ndarray | None = None):
    """(raw value, position after, byte count) of the varint at each position; a varint
    of more than 64 bits clears `ok` of its row (`rows` maps positions to rows of ok)."""
    last = len(buf) - 1
    b = buf[np.minimum(at, last)]
    raw = (b & 0x7F).astype(np.uint64)
    after = at + 1
    going = np.flatnonzero(b >= 0x80)
    shift = 7
    while going.size:
        if shift > 63:                    # an 11th byte
            ok[going if rows is None else rows[going]] = False
            break
        pos = after[going]
        b = buf[np.minimum(pos, last)]
        if shift == 63:                   # a 10th byte may only hold the 64th bit
            over = going[b > 1]
            ok[over if rows is None else rows[over]] = False
        raw[going] |= (b & 0x7F).astype(np.uint64) << np.uint64(shift)
        after[going] = pos + 1
        going = going[b >= 0x80]
        shift += 7
    return raw, after, after - at


def _pair_names(buf: np.ndarray, start: np.ndarray, length: np.ndarray, ok: np.ndarray):
    """(names, index into names per record): each distinct pair decoded once."""
    index = np.zeros(len(start), np.int64)
    rows = np.flatnonzero(ok)
    if not len(rows):
        return [], index
    s, n = start[rows], length[rows]
    width = max(1, int(n.max()))
    grid = np.arange(width)
    mat = np.where(grid < n[:, None], buf[np.minimum(s[:, None] + grid, len(buf) - 1)], 0)
    ascii_ = (mat < 0x80).all(axis=1)
    if not ascii_.all():                  # any other name takes the codec path
        ok[rows[~ascii_]] = False
        rows, s, n, mat = rows[ascii_], s[ascii_], n[ascii_], mat[ascii_]
        if not len(rows):
            return [], index
    # The length rides along: "A" and "A\0" differ.
    keys = np.concatenate([mat.astype(np.uint8), n[:, None].astype(np.uint8)], axis=1)
    keys = np.ascontiguousarray(keys).view(np.dtype((np.void, width + 1))).ravel()
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    index[rows] = inverse.ravel()
    names = [buf[s[f]:s[f] + n[f]].tobytes().decode("ascii") for f in first.tolist()]
    return names, index
