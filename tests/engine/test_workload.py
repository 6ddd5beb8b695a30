"""The standard workload's totals, as the issue states them, from independent engines.

Totals: Trade events (fills) and their lots, Cancelled events with reason CANCELED (a
cancel that removed a live order), and what rests at the end (orders and lots).
"""
from __future__ import annotations

from decimal import Decimal

import pytest

from engine import workload
from engine.domain import Cancelled, OrderKind, Place, Reason, TimeInForce, Trade
from engine.engine import Engine
from engine.markets import Market

from .test_golden import IMPLS

BENCH = Market(pair=workload.PAIR, base="BTC", quote="USDT", tick_size=Decimal("0.01"),
               lot_size=Decimal("0.0001"), min_notional=Decimal("0"), maker_fee_ppm=0,
               taker_fee_ppm=0, partition=0)

# (fills, lots traded, cancels that removed a live order, resting orders, resting lots)
EXPECTED = {
    100_000: (19_349, 494_462, 25_384, 24_827, 1_247_696),
    1_000_000: (192_495, 4_914_246, 253_309, 251_347, 12_684_653),
}
# sha256 of the ops as little-endian int32 (workload.digest). These pin the generator
# itself: if it changes, the totals above no longer mean anything.
DIGESTS = {
    100_000: "1bc3ecbc67e19b7e421bf21baa8dac459aebdcc1ed6ecfaa8f041103c2d16a9e",
    1_000_000: "d8ffdd05e3aa7597200e685054b74bd9a304142769ba21d2c4d361f5d60c1bc6",
}


def run(engine: Engine, cmds) -> tuple[tuple[int, ...], str]:
    """Totals and final state hash, counted as the events stream by (nothing kept)."""
    fills = lots = cancels = 0
    seq = 0
    for cmd in cmds:
        for event in engine.apply(cmd):
            seq += 1
            assert event.seq == seq
            kind = type(event)
            if kind is Trade:
                fills += 1
                lots += event.qty
            elif kind is Cancelled and event.reason == Reason.CANCELED:
                cancels += 1
    book = engine.book(workload.PAIR)
    assert book.resting_qty() == sum(order[4] for order in book.orders())
    return (fills, lots, cancels, len(book), book.resting_qty()), engine.state_hash()


@pytest.fixture(scope="module")
def ops_100k():
    return workload.operations(100_000)


def test_operation_digests(ops_100k):
    assert workload.digest(ops_100k) == DIGESTS[100_000]
    assert workload.digest(workload.operations(1_000_000)) == DIGESTS[1_000_000]


def test_crossing_limits_are_gtc(ops_100k):
    """The issue only says market orders are IOC; the totals decide XLIMIT. Run as GTC
    (what to_commands does) they match; run as IOC they do not."""
    xlimits = {op[1] for op in ops_100k if op[0] == workload.XLIMIT}
    cmds = list(workload.to_commands(ops_100k))
    crossing = [c for c in cmds if isinstance(c, Place) and c.order_id in xlimits]
    assert crossing and all(c.kind == OrderKind.LIMIT and c.tif == TimeInForce.GTC
                            for c in crossing)
    as_ioc = [c._replace(tif=TimeInForce.IOC) if isinstance(c, Place) and c.order_id in xlimits
              else c for c in cmds]
    totals, _ = run(Engine([BENCH], impl="auto"), as_ioc)
    assert totals != EXPECTED[100_000]


def test_eight_independent_engines_agree_on_100k(ops_100k):
    cmds = list(workload.to_commands(ops_100k))
    impls = [IMPLS[i % len(IMPLS)] for i in range(8)]
    results = [run(Engine([BENCH], impl=impl), cmds) for impl in impls]
    assert [totals for totals, _ in results] == [EXPECTED[100_000]] * 8
    assert len({state for _, state in results}) == 1


def test_1m_totals_with_the_fastest_book():
    engine = Engine([BENCH], impl="auto")
    totals, _ = run(engine, workload.to_commands(workload.operations(1_000_000)))
    assert totals == EXPECTED[1_000_000]
