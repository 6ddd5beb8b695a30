"""keel.events values -> columns, a whole batch at a time (the PostgreSQL sink's decode).

fastavro takes ~4.5 us per engine event and the NamedTuple it becomes costs as much again
to fold; at the sink's target rate that alone fills a core. But every field of an engine
event except the pair is an Avro long or int (a zigzag varint) or a boolean (one byte),
so the bodies of a batch can be cut into varints with array operations: one pass marks
where each varint ends, one sums its 7-bit groups. A record is read that way only when it
carries the current writer's single-object header and its shape checks out exactly (pair
of ASCII bytes, a known union branch, as many varints as that branch has fields, nothing
left over, no varint longer than 64 bits). Anything else -- an older writer version,
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
    pair = np.zeros(n, np.int64)
    seq = np.zeros(n, np.int64)
    ts = np.zeros(n, np.int64)
    kind = np.zeros(n, np.int64)
    fields = np.zeros((n, MAX_FIELDS), np.int64)
    good = np.zeros(n, bool)
    codes: dict[str, int] = {}
    slow = np.ones(n, bool)
    if FAST and codec.registry is None and n:
        header = MARKER + codec.catalog.current["engine_event"].fingerprint
        idx, ok, cols, names = _fast(values, header)
        hit = idx[ok]
        mapping = np.array([codes.setdefault(name, len(codes)) for name in names], np.int64)
        if len(hit):
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
    """Read the records by array operations.

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
    buf = np.frombuffer(blob, np.uint8)
    if not k or not len(buf):
        return idx, np.zeros(k, bool), (None,) * 5, []
    ends = np.cumsum(lens)
    starts = ends - lens
    last = np.maximum(ends - 1, 0)
    ok = lens >= _HEADER_LEN + 4
    head = np.minimum(starts[:, None] + np.arange(_HEADER_LEN), len(buf) - 1)
    ok &= (buf[head] == np.frombuffer(header, np.uint8)).all(axis=1)
    is_end = buf < 0x80
    ok &= is_end[last]                    # a varint running off the end: truncated
    # Marks below touch only a record's own bytes, or one record could spoil the next.
    is_end[last[lens > 0]] = True         # never let a varint cross into the next record
    # The header is one token (never looked at); it cannot run into the body.
    long_enough = head[lens >= _HEADER_LEN + 4]
    is_end[long_enough[:, :-1]] = False
    is_end[long_enough[:, -1]] = True
    tok_end = np.flatnonzero(is_end)
    n_tok = len(tok_end)
    tok_start = np.empty_like(tok_end)
    tok_start[0] = 0
    tok_start[1:] = tok_end[:-1] + 1
    tok_len = tok_end - tok_start + 1
    # Value of every varint: the 7-bit groups, least significant first.
    pos = np.arange(len(buf), dtype=np.int64) - np.repeat(tok_start, tok_len)
    shift = (np.minimum(pos, 9) * 7).astype(np.uint64)
    raw = np.add.reduceat((buf & 0x7F).astype(np.uint64) << shift, tok_start)
    z = (raw >> np.uint64(1)).view(np.int64) ^ -(raw & np.uint64(1)).view(np.int64)
    # More than 10 bytes, or a 10th byte with bits past the 64th: not a long.
    tok_bad = (tok_len > 10) | ((tok_len == 10) & (buf[tok_end] > 1))
    ends_before = np.cumsum(is_end)[last]             # tokens up to each record's end
    count = np.diff(ends_before, prepend=0)
    t0 = ends_before - count + 1                       # first token of the body

    def at(i):                            # an index that cannot fail; bad rows are not ok
        return np.clip(i, 0, n_tok - 1)

    bad_before = np.cumsum(tok_bad)       # bad varints in the body: from t0 to the end
    ok &= bad_before[at(ends_before - 1)] == bad_before[at(t0 - 1)]
    count = count - 1

    length = z[at(t0)]
    ok &= (length >= 0) & (length <= _MAX_PAIR) & (count >= length + 4)
    length = np.where(ok, length, 0)
    seq_tok = t0 + 1 + length
    # ASCII pair: each of its bytes is a one-byte token, so its tokens span its length.
    ok &= tok_start[at(seq_tok)] - tok_start[at(t0 + 1)] == length
    seq, ts, branch = z[at(seq_tok)], z[at(seq_tok + 1)], z[at(seq_tok + 2)]
    ok &= (branch >= 0) & (branch < len(KINDS))
    branch = np.where(ok, branch, 0)
    n_fields = _N_FIELDS[branch]
    ok &= count == length + 4 + n_fields
    fields = np.zeros((k, MAX_FIELDS), np.int64)
    for j in range(MAX_FIELDS):
        t = at(seq_tok + 3 + j)
        fields[:, j] = np.where(j < n_fields, z[t], 0)
    for b, name in enumerate(KINDS):
        for j, ty in enumerate(_TYPES[name]):
            if ty == "boolean":
                # One byte, 0 or 1 (a longer varint of value 1 is not a boolean).
                rows = np.flatnonzero(branch == b)
                t = at(seq_tok[rows] + 3 + j)
                ok[rows] &= (raw[t] <= 1) & (tok_len[t] == 1)
                fields[rows, j] = raw[t].astype(np.int64)
    names, pair_index = _pair_names(buf, tok_start[at(t0 + 1)], length, ok)
    return idx, ok, (pair_index, seq, ts, branch, fields), names


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
    # The length rides along: "A" and "A\0" differ.
    keys = np.concatenate([mat.astype(np.uint8), n[:, None].astype(np.uint8)], axis=1)
    keys = np.ascontiguousarray(keys).view(np.dtype((np.void, width + 1))).ravel()
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    index[rows] = inverse.ravel()
    names = [buf[s[f]:s[f] + n[f]].tobytes().decode("ascii") for f in first.tolist()]
    return names, index
