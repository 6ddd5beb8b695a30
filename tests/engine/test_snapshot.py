"""Snapshot -> restore -> continue must equal an uninterrupted run; bad bytes never restore."""
from __future__ import annotations

import struct
from decimal import Decimal

import pytest

from engine import workload
from engine.domain import STP, OrderKind, Place, SetTrading, Side, TimeInForce
from engine.engine import Engine
from engine.markets import Market
from engine.snapshot import SnapshotError, decode

from .test_golden import IMPLS

N_OPS = 20_000
SPLITS = [0, 1, 4_999, 12_345, N_OPS]


def market(pair: str, partition: int, maker_fee_ppm=1000, taker_fee_ppm=2000) -> Market:
    return Market(pair=pair, base="BTC", quote="USDT", tick_size=Decimal("0.01"),
                  lot_size=Decimal("0.0001"), min_notional=Decimal("0"),
                  maker_fee_ppm=maker_fee_ppm, taker_fee_ppm=taker_fee_ppm,
                  partition=partition)


MARKETS = [market("BENCH", 0), market("ALT", 1, 0, 500)]


def commands() -> list:
    """The standard workload on BENCH, with a few commands on ALT woven in."""
    cmds = list(workload.to_commands(workload.operations(N_OPS)))
    cmds.insert(10, Place("ALT", 1, 7, Side.SELL, OrderKind.LIMIT, TimeInForce.GTC,
                          500, 3, 0, STP.NONE, 10))
    cmds.insert(20, Place("ALT", 2, 8, Side.BUY, OrderKind.LIMIT, TimeInForce.GTC,
                          400, 3, 0, STP.NONE, 20))
    cmds.insert(30, SetTrading("ALT", False, 30))
    return cmds


@pytest.fixture(scope="module")
def uninterrupted():
    cmds = commands()
    engine = Engine(MARKETS, impl="python")
    return cmds, engine.apply_many(cmds), engine.state_hash()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", SPLITS)
def test_restore_then_continue_equals_uninterrupted(uninterrupted, impl, split):
    cmds, events, final_hash = uninterrupted
    first = Engine(MARKETS, impl=impl)
    head = first.apply_many(cmds[:split])
    data = first.snapshot()
    second = Engine.restore(MARKETS, data, impl=impl)
    assert second.snapshot() == data
    assert second.state_hash() == first.state_hash()
    tail = second.apply_many(cmds[split:])
    assert head + tail == events
    assert second.state_hash() == final_hash


def test_snapshots_are_identical_across_implementations(uninterrupted):
    cmds, _, final_hash = uninterrupted
    hashes = set()
    for impl in IMPLS:
        engine = Engine(MARKETS, impl=impl)
        engine.apply_many(cmds[:N_OPS // 2])
        data = engine.snapshot()
        for other in IMPLS:          # restore into every implementation, then continue
            restored = Engine.restore(MARKETS, data, impl=other)
            restored.apply_many(cmds[N_OPS // 2:])
            hashes.add(restored.state_hash())
    assert hashes == {final_hash}


def test_restore_keeps_trading_flag_and_takes_fees_from_markets(uninterrupted):
    cmds, _, _ = uninterrupted
    engine = Engine(MARKETS, impl="python")
    engine.apply_many(cmds[:100])
    restored = Engine.restore(MARKETS, engine.snapshot(), impl="python")
    assert restored.book("ALT").trading is False
    assert restored.book("BENCH").trading is True
    assert (restored.book("BENCH").maker_fee_ppm, restored.book("ALT").taker_fee_ppm) == \
        (1000, 500)
    # A market configured after the snapshot starts as an empty, fresh book.
    grown = Engine.restore(MARKETS + [market("NEW", 2)], engine.snapshot(), impl="python")
    assert (grown.has_pair("NEW"), len(grown.book("NEW")), grown.book("NEW").seq) == (True, 0, 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_snapshot_bytes_are_the_documented_format(impl):
    engine = Engine([market("T", 0)], impl=impl)
    assert engine.snapshot() == (b"KEEL" + struct.pack("<HI", 1, 1) + struct.pack("<H", 1) + b"T"
                                 + struct.pack("<BQQI", 1, 0, 0, 0))
    book = engine.book("T")
    book.place(1, 11, Side.BUY, OrderKind.LIMIT, TimeInForce.GTC, 100, 5, 0, STP.EXPIRE_MAKER, 1)
    book.place(2, 12, Side.SELL, OrderKind.LIMIT, TimeInForce.GTC, 103, 3, 0, STP.NONE, 2)
    book.place(3, 13, Side.BUY, OrderKind.LIMIT, TimeInForce.GTC, 101, 4, 0, STP.NONE, 3)
    book.place(4, 14, Side.BUY, OrderKind.LIMIT, TimeInForce.GTC, 100, 2, 0, STP.NONE, 4)
    book.place(5, 15, Side.SELL, OrderKind.MARKET, TimeInForce.IOC, 0, 1, 0, STP.NONE, 5)
    book.set_trading(False, 6)
    records = [(3, 13, 0, 101, 3, 0), (1, 11, 0, 100, 5, 2), (4, 14, 0, 100, 2, 0),
               (2, 12, 1, 103, 3, 0)]
    assert book.dump() == (struct.pack("<H", 1) + b"T" + struct.pack("<BQQI", 0, 8, 1, 4)
                           + b"".join(struct.pack("<qqBqqB", *r) for r in records))
    assert book.orders() == records


@pytest.fixture(scope="module")
def good_snapshot(uninterrupted):
    cmds, _, _ = uninterrupted
    engine = Engine(MARKETS, impl="python")
    engine.apply_many(cmds[:2_000])
    return engine.snapshot()


def _corruptions(data: bytes) -> dict[str, bytes]:
    sections = decode(data)
    alt, bench = sections["ALT"], sections["BENCH"]
    bad_record = bytearray(bench)
    bad_record[len(bench) - 34 + 16] = 7                 # last record's side byte
    dup_record = bench[:-34] + bench[-68:-34]            # last record = the one before it
    return {
        "empty": b"",
        "bad magic": b"KEEP" + data[4:],
        "unknown version": data[:4] + struct.pack("<H", 2) + data[6:],
        "truncated header": data[:7],
        "truncated in a book header": data[:10 + 2 + 3 + 5],
        "truncated in a record": data[:-5],
        "missing a book": data[:4 + 2] + struct.pack("<I", 3) + data[10:],
        "trailing bytes": data + b"\x00",
        "books out of order": data[:10] + bench + alt,
        "invalid record": data[:10] + alt + bytes(bad_record),
        "duplicate order id": data[:10] + alt + dup_record,
        "unknown pair": data[:6] + struct.pack("<I", 1) + alt.replace(b"ALT", b"ZZZ"),
    }


CASES = ["empty", "bad magic", "unknown version", "truncated header",
         "truncated in a book header", "truncated in a record", "missing a book",
         "trailing bytes", "books out of order", "invalid record", "duplicate order id",
         "unknown pair"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_bad_snapshots_raise_snapshot_error(good_snapshot, impl, case):
    Engine.restore(MARKETS, good_snapshot, impl=impl)    # the untouched one restores
    with pytest.raises(SnapshotError):
        Engine.restore(MARKETS, _corruptions(good_snapshot)[case], impl=impl)


def test_snapshot_error_messages_say_what_is_wrong(good_snapshot):
    bad = _corruptions(good_snapshot)
    for case, words in [("bad magic", "magic"), ("unknown version", "version 2"),
                        ("truncated in a record", "truncated"), ("unknown pair", "ZZZ")]:
        with pytest.raises(SnapshotError, match=words):
            Engine.restore(MARKETS, bad[case], impl="python")


def test_engine_routing_and_impl_choice():
    engine = Engine(MARKETS, impl="python")
    assert engine.impl == "python"
    assert (engine.has_pair("BENCH"), engine.has_pair("NOPE")) == (True, False)
    assert engine.apply(SetTrading("NOPE", False, 1)) == []
    assert engine.apply(SetTrading("ALT", False, 1))[0].pair == "ALT"
    assert engine.book("BENCH").seq == 0
    assert Engine(MARKETS, impl="auto").impl == ("c" if "c" in IMPLS else "python")
    with pytest.raises(ValueError):
        Engine(MARKETS, impl="fortran")
