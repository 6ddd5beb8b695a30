"""The whole-engine snapshot: a header, then each book's section in ascending pair name.

The byte format is fixed by engine.domain (so every book implementation produces the
same bytes and the same state hash):

    b"KEEL" u16 version u32 n_books, then per book:
    u16 len + pair utf-8, u8 trading, u64 seq, u64 last_trade_id, u32 n_orders,
    n_orders records "<qqBqqB" (order_id, user_id, side, price, remaining, stp).

A damaged snapshot raises SnapshotError with what is wrong and where; it never yields a
half-restored engine.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol

MAGIC = b"KEEL"
VERSION = 1

HEADER = struct.Struct("<4sHI")
PAIR_LEN = struct.Struct("<H")
BOOK_HEAD = struct.Struct("<BQQI")
RECORD = struct.Struct("<qqBqqB")


class SnapshotError(ValueError):
    """The snapshot bytes cannot be restored (bad magic, unknown version, truncated...)."""


class Section(NamedTuple):
    pair: str
    trading: bool
    seq: int
    last_trade_id: int
    # (order_id, user_id, side, price, remaining, stp), in snapshot order
    orders: list[tuple[int, int, int, int, int, int]]


class Dumpable(Protocol):
    def dump(self) -> bytes: ...


def pack_section(pair: str, trading: bool, seq: int, last_trade_id: int,
                 orders: Iterable[tuple[int, int, int, int, int, int]]) -> bytes:
    name = pair.encode()
    body = b"".join([RECORD.pack(*o) for o in orders])
    return b"".join((PAIR_LEN.pack(len(name)), name,
                     BOOK_HEAD.pack(bool(trading), seq, last_trade_id, len(body) // RECORD.size),
                     body))


def section_end(data: bytes, offset: int = 0) -> int:
    """Where the section starting at `offset` ends (sections carry their own length)."""
    end = offset + PAIR_LEN.size
    if end > len(data):
        raise SnapshotError(f"truncated: book section at byte {offset} has no pair length")
    (name_len,) = PAIR_LEN.unpack_from(data, offset)
    head = end + name_len
    if head + BOOK_HEAD.size > len(data):
        raise SnapshotError(f"truncated: book section at byte {offset} has no header")
    n_orders = BOOK_HEAD.unpack_from(data, head)[3]
    end = head + BOOK_HEAD.size + n_orders * RECORD.size
    if end > len(data):
        raise SnapshotError(f"truncated: book section at byte {offset} declares {n_orders} "
                            f"orders but only {len(data) - head - BOOK_HEAD.size} bytes follow")
    return end


def unpack_section(section: bytes) -> Section:
    """Parse one book's section, checking it is whole, canonical and self-consistent."""
    section = bytes(section)
    if section_end(section) != len(section):
        raise SnapshotError(f"book section has {len(section) - section_end(section)} "
                            "trailing bytes")
    (name_len,) = PAIR_LEN.unpack_from(section, 0)
    try:
        pair = section[PAIR_LEN.size:PAIR_LEN.size + name_len].decode()
    except UnicodeDecodeError:
        raise SnapshotError("book section: pair name is not utf-8") from None
    at = PAIR_LEN.size + name_len
    trading, seq, last_trade_id, n_orders = BOOK_HEAD.unpack_from(section, at)
    if trading > 1:
        raise SnapshotError(f"{pair}: trading flag {trading} is not 0 or 1")
    orders = list(RECORD.iter_unpack(section[at + BOOK_HEAD.size:]))
    seen: set[int] = set()
    prev_side, prev_price = 0, None
    for order_id, _user, side, price, remaining, stp in orders:
        if side > 1 or stp > 3 or price <= 0 or remaining <= 0:
            raise SnapshotError(f"{pair}: order {order_id} has an invalid record")
        if order_id in seen:
            raise SnapshotError(f"{pair}: order {order_id} appears twice")
        seen.add(order_id)
        # Canonical order: bids best (highest) first, then asks best (lowest) first.
        if side < prev_side or (side == prev_side and prev_price is not None and (
                price > prev_price if side == 0 else price < prev_price)):
            raise SnapshotError(f"{pair}: order {order_id} is out of book order")
        if side != prev_side:
            prev_side = side
        prev_price = price
    return Section(pair, bool(trading), seq, last_trade_id, orders)


def encode(books: Mapping[str, Dumpable]) -> bytes:
    """The engine snapshot of `books` (pair -> book), in ascending pair name."""
    pairs = sorted(books)
    return b"".join([HEADER.pack(MAGIC, VERSION, len(pairs))]
                    + [books[pair].dump() for pair in pairs])


def decode(data: bytes) -> dict[str, bytes]:
    """Split a snapshot into its books' sections (pair -> section bytes), in pair order."""
    data = bytes(data)
    if len(data) < HEADER.size:
        raise SnapshotError(f"truncated: {len(data)} bytes is shorter than the header")
    magic, version, n_books = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise SnapshotError(f"bad magic {magic!r}: not a Keel engine snapshot")
    if version != VERSION:
        raise SnapshotError(f"unknown snapshot version {version} (this build reads {VERSION})")
    sections: dict[str, bytes] = {}
    at = HEADER.size
    previous = None
    for index in range(n_books):
        if at >= len(data):
            raise SnapshotError(f"truncated: header declares {n_books} books, found {index}")
        end = section_end(data, at)
        section = data[at:end]
        pair = unpack_section(section).pair
        if previous is not None and pair <= previous:
            raise SnapshotError(f"book {pair!r} is out of order or repeated after {previous!r}")
        sections[pair] = section
        previous = pair
        at = end
    if at != len(data):
        raise SnapshotError(f"{len(data) - at} trailing bytes after {n_books} books")
    return sections
