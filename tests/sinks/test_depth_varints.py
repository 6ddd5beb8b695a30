"""The depth fast path's level arrays written every way Avro allows (blocks of any size,
blocks that give their byte size, empty sides) and its level values at the edges of
their varint widths: the columns agree with the codec record by record."""
from __future__ import annotations

import random

import numpy as np
import pytest

from schemas.codec import Codec
from schemas.varint import zigzag
from sinks import depth_columns
from sinks.depth_native import current_header
from tests.sinks.feed import depth_updates
from tests.sinks.test_depth_native import (  # noqa: F401 - reader is a fixture
    _head,
    _heads,
    levels,
    reader,
    reads_as_the_codec,
)


def _array(levels: list[dict], rng: random.Random) -> bytes:
    """An Avro array of levels cut into blocks at random, some giving their byte size."""
    out, at = [], 0
    while at < len(levels):
        n = rng.randint(1, len(levels) - at)
        body = b"".join(zigzag(lv["price"]) + zigzag(lv["qty"]) for lv in levels[at:at + n])
        out.append(zigzag(-n) + zigzag(len(body)) if rng.random() < 0.5 else zigzag(n))
        out.append(body)
        at += n
    return b"".join(out) + b"\0"


def _blocked(codec: Codec, d: dict, rng: random.Random) -> bytes:
    head = codec.encode("depth_update", {**d, "bids": [], "asks": []})[:-2]
    return head + _array(d["bids"], rng) + _array(d["asks"], rng)


@pytest.mark.parametrize("chunk", [depth_columns.CHUNK, 97, "compiled"])
def test_arrays_in_blocks_read_as_the_codec_reads_them(chunk, monkeypatch):
    if chunk == "compiled":
        assert depth_columns._compiled is not None, "sinks._depth was not built"
    else:
        monkeypatch.setattr(depth_columns, "_compiled", None)
        monkeypatch.setattr(depth_columns, "CHUNK", chunk)
    codec = Codec()
    rng = random.Random(31)
    depth = depth_updates(1200, seed=17)
    for d in depth[::7]:
        d["bids"] = []
    for d in depth[::11]:
        d["asks"] = []
    values = [_blocked(codec, d, rng) if i % 3 else codec.encode("depth_update", d)
              for i, d in enumerate(depth)]
    assert [codec.decode("depth_update", v) for v in values[:50]] == depth[:50]
    heads = depth_columns.read(values, current_header())
    assert heads.index.tolist() == list(range(len(values)))
    assert _heads(heads) == [_head(d) for d in depth]


EDGES = [0, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, -8193, (1 << 20) - 1, -(1 << 20),
         1 << 20, -(1 << 20) - 1, (1 << 27) - 1, -(1 << 27)]


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("widest", [None, 1 << 27, -(1 << 27) - 1, (1 << 62) - 1, -(1 << 62)])
def test_level_values_at_the_edges_of_their_widths(widest):
    """Zigzag varints of 1 to 4 bytes on their own (read in 32 bits), and with one wider
    value among them (the whole batch read in 64 bits)."""
    rng = random.Random(3)
    depth = depth_updates(600, seed=5)
    for lv in levels(depth):
        lv["price"], lv["qty"] = rng.choice(EDGES), rng.choice(EDGES)
    if widest is not None:
        depth[rng.randrange(len(depth))]["asks"].append({"price": widest, "qty": 1})
    heads = reads_as_the_codec(depth)
    for side in (heads.bids, heads.asks):
        assert side.price.dtype == side.qty.dtype == side.count.dtype == np.int64


def test_pair_strings_by_runs_and_by_rows():
    """The pair column is the same bytes whether the names come in long runs (a block in
    pair order) or interleaved."""
    from schemas.varint import varint
    from sinks.depth_native import _strings

    names = ["BTCUSDT", "A", "", "X" * 70]
    rng = np.random.default_rng(4)
    for codes in (np.repeat([2, 0, 3, 1, 0], [1, 500, 70, 300, 2]), rng.integers(0, 4, 900),
                  np.zeros(1, np.int64)):
        want = b"".join(varint(len(names[c])) + names[c].encode() for c in codes.tolist())
        assert _strings(names, codes) == want
