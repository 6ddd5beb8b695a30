"""Base-128 varints as the hand-written encoders write them: Avro ints and longs (zigzag,
then the varint) for the engine's wire path and the gateway's new-order record, and
ClickHouse's Native lengths (the plain unsigned varint) for the depth sink, and Avro
strings (length, then UTF-8) for the hand-written record writers. One writer, so the
byte layouts cannot drift apart."""
from __future__ import annotations

BYTE = [bytes((b,)) for b in range(128)]        # every one-byte varint


def varint(n: int) -> bytes:
    """Unsigned little-endian base-128 (LEB128) of `n` >= 0."""
    if n < 0x80:
        return BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(n: int) -> bytes:
    """An Avro int/long: zigzag (small magnitudes stay small), then the varint."""
    return varint((n << 1) ^ (n >> 63))


def string(text: str) -> bytes:
    """An Avro string: its UTF-8 length as an Avro long, then the bytes."""
    data = text.encode()
    size = len(data)
    return (BYTE[size << 1] if size < 64 else zigzag(size)) + data


def framing(want: bytes, body: bytes) -> bytes | None:
    """The codec's framing header, if its encoding `want` is that header followed by
    exactly `body` (a hand-written writer checking itself against the codec); else None."""
    return want[:-len(body)] if want.endswith(body) else None
