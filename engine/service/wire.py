"""A faster path for the engine's two hot encodings, byte-identical to schemas.codec.

The engine decodes one keel.OrderCommand and encodes one or two keel.EngineEvent per
order; through fastavro each costs ~7 us, most of it per-call set-up. These are flat
records of longs, ints, booleans and one string, so they are written and read here
directly in Avro binary (zig-zag varints). Anything unusual (another writer schema, a
registry framing, a malformed body) goes to the codec, which decodes older versions and
explains faults exactly. tests/engine_service/test_wire.py pins byte equality.

engine/service/_wire.c does the same walk compiled (optional, like engine/_cbook.c): when
it was built, FastWire's decode_command / encode_event / event_records are its methods,
with the codec as their fallback; otherwise the Python below runs.
"""
from __future__ import annotations

from typing import get_type_hints

from engine.domain import (
    EVENT_TYPES,
    Amend,
    Cancel,
    CancelAll,
    Place,
    SetTrading,
)
from schemas.codec import COMMANDS, EVENTS, Codec
from schemas.varint import string as _string
from schemas.varint import zigzag

try:
    from engine.service import _wire as _compiled
except ImportError:         # not built: the Python path below, same results
    _compiled = None


_CACHE_MAX = 1 << 14            # small non-negative values (sides, codes, qty) from a table
_ZZ = [zigzag(n) for n in range(_CACHE_MAX)]


def zz(n: int) -> bytes:
    """Avro long/int encoding of n (zig-zag varint), unrolled for the usual sizes."""
    if 0 <= n < _CACHE_MAX:
        return _ZZ[n]
    z = (n << 1) ^ (n >> 63)
    if z < 0x200000:
        if z < 0x80:
            return bytes((z,))
        if z < 0x4000:
            return bytes((z & 0x7F | 0x80, z >> 7))
        return bytes((z & 0x7F | 0x80, (z >> 7) & 0x7F | 0x80, z >> 14))
    if z < 0x800000000:
        if z < 0x10000000:
            return bytes((z & 0x7F | 0x80, (z >> 7) & 0x7F | 0x80, (z >> 14) & 0x7F | 0x80,
                          z >> 21))
        return bytes((z & 0x7F | 0x80, (z >> 7) & 0x7F | 0x80, (z >> 14) & 0x7F | 0x80,
                      (z >> 21) & 0x7F | 0x80, z >> 28))
    return zigzag(n)


class FastWire:
    """encode_event / decode_command with the codec's exact bytes and results.

    `compiled`: None takes engine.service._wire when it was built; True insists on it
    (ImportError if missing); False keeps the Python path (tests compare the two)."""

    def __init__(self, codec: Codec, compiled: bool | None = None) -> None:
        self.codec = codec
        writer = codec._writers.get(EVENTS)
        # Registry framing (or any other writer) keeps the codec's own path.
        self.enabled = writer is not None and writer[0][:2] == b"\xc3\x01"
        self._event_header = writer[0] if self.enabled else b""
        cmd_writer = codec._writers.get(COMMANDS)
        self._command_header = cmd_writer[0] if cmd_writer else b"-"
        self._pair_prefix: dict[str, bytes] = {}
        self._branch = {cls: zz(i) for i, cls in enumerate(EVENT_TYPES)}
        self._bool_fields = {cls: frozenset(i for i, t in enumerate(get_type_hints(cls).values())
                                            if t is bool) for cls in EVENT_TYPES}
        self.compiled = None
        if compiled or (compiled is None and _compiled is not None):
            if _compiled is None:
                raise ImportError("engine.service._wire was not built")
            self.compiled = _compiled.Wire(
                self._command_header if len(self._command_header) == 10 else None,
                self._event_header if self.enabled else None,
                (Place, Cancel, Amend, CancelAll, SetTrading), tuple(EVENT_TYPES),
                tuple(sum(1 << i for i in self._bool_fields[cls]) for cls in EVENT_TYPES),
                codec.decode_command, codec.encode_event)
            # Instance attributes: callers bind these, so the compiled methods are called
            # directly, with no Python frame in between.
            self.decode_command = self.compiled.decode_command
            self.encode_event = self.compiled.encode_event
            self.event_records = self.compiled.event_records

    # ---- events ----

    def encode_event(self, ev) -> bytes:
        if not self.enabled:
            return self.codec.encode_event(ev)
        cls = type(ev)
        prefix = self._pair_prefix.get(ev[0])
        if prefix is None:
            prefix = self._pair_prefix[ev[0]] = self._event_header + _string(ev[0])
        bools = self._bool_fields[cls]
        if not bools:
            return b"".join((prefix, zz(ev[1]), zz(ev[2]), self._branch[cls], *map(zz, ev[3:])))
        parts = [prefix, zz(ev[1]), zz(ev[2]), self._branch[cls]]
        for i in range(3, len(ev)):
            v = ev[i]
            if i in bools:
                parts.append(b"\x01" if v else b"\x00")
            else:
                parts.append(zz(v))
        return b"".join(parts)

    def event_records(self, evs, key: bytes) -> list[dict]:
        """produce_batch records ({"value", "key"}) for one command's events."""
        encode = self.encode_event
        return [{"value": encode(ev), "key": key} for ev in evs]

    # ---- commands ----

    def decode_command(self, data: bytes):
        """(command, request_id), exactly as codec.decode_command; faults via the codec."""
        if data[:10] != self._command_header:
            return self.codec.decode_command(data)
        try:
            result, end = self._read_command(data, 10)
        except (IndexError, ValueError, UnicodeDecodeError):
            return self.codec.decode_command(data)
        if end != len(data):
            return self.codec.decode_command(data)
        return result

    def _read_command(self, b: bytes, pos: int):
        rid = None
        tag, pos = _long(b, pos)
        if tag == 1:
            n, pos = _long(b, pos)
            if n < 0:
                raise ValueError("negative length")
            rid = b[pos:pos + n].decode()
            pos += n
        elif tag != 0:
            raise ValueError("bad union")
        branch, pos = _long(b, pos)
        n, pos = _long(b, pos)
        if n < 0 or pos + n > len(b):
            raise ValueError("bad pair")
        pair = b[pos:pos + n].decode()
        pos += n
        if branch == 0:
            vals = []
            append = vals.append
            for _ in range(10):         # varints inline: this loop is the hot path
                byte = b[pos]
                pos += 1
                if byte < 0x80:         # most fields (side, kind, tif, stp...) are one byte
                    append((byte >> 1) ^ -(byte & 1))
                    continue
                z = byte & 0x7F
                shift = 7
                while True:
                    byte = b[pos]
                    pos += 1
                    z |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 63:
                        raise ValueError("varint too long")
                if z >> 64:
                    raise ValueError("varint beyond 64 bits")
                append((z >> 1) ^ -(z & 1))
            return (Place(pair, *vals), rid), pos
        if branch == 1:
            a, pos = _long(b, pos)
            u, pos = _long(b, pos)
            t, pos = _long(b, pos)
            return (Cancel(pair, a, u, t), rid), pos
        if branch == 2:
            vals = []
            for _ in range(5):
                v, pos = _long(b, pos)
                vals.append(v)
            return (Amend(pair, *vals), rid), pos
        if branch == 3:
            u, pos = _long(b, pos)
            t, pos = _long(b, pos)
            return (CancelAll(pair, u, t), rid), pos
        if branch == 4:
            flag = b[pos]
            if flag > 1:
                raise ValueError("bad boolean")
            t, pos = _long(b, pos + 1)
            return (SetTrading(pair, flag == 1, t), rid), pos
        raise ValueError("bad command branch")


def _long(b: bytes, pos: int) -> tuple[int, int]:
    byte = b[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    result = byte & 0x7F
    byte = b[pos + 1]
    if byte < 0x80:
        result |= byte << 7
        return (result >> 1) ^ -(result & 1), pos + 2
    result |= (byte & 0x7F) << 7
    byte = b[pos + 2]
    if byte < 0x80:
        result |= byte << 14
        return (result >> 1) ^ -(result & 1), pos + 3
    result |= (byte & 0x7F) << 14
    pos += 3
    shift = 21
    while True:
        byte = b[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
    if result >> 64:
        raise ValueError("varint beyond 64 bits")     # fastavro would wrap; let it explain
    return (result >> 1) ^ -(result & 1), pos
