"""Every book implementation against the slow reference book, command by command.

Each implementation (the reference itself, engine.book.OrderBook, engine._cbook.OrderBook
when it builds) is fed the same commands as tests/engine/reference.py. After every
command the events must be equal, types included, and the implementation must pass
the invariants in tests/engine/invariants.py; every few commands and at the end the
dump() bytes (the snapshot section) must be identical.

Knobs (environment): KEEL_PROPERTY_EXAMPLES (default 200) and KEEL_PROPERTY_RANDOM=1
to explore new examples instead of the fixed derandomized set.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import random
import struct
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings

from engine import workload
from engine.domain import Cancelled, Trade
from engine.engine import Engine
from engine.markets import Market

from .invariants import BookAuditor
from .reference import ReferenceBook
from .strategies import (
    MARKETS,
    PAIR,
    CommandMaker,
    MarketSpec,
    market_specs,
    op_lists,
    random_op,
)

EXAMPLES = int(os.environ.get("KEEL_PROPERTY_EXAMPLES", "200"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    derandomize=os.environ.get("KEEL_PROPERTY_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HASH_EVERY = 5          # commands between dump() comparisons in the Hypothesis tests


def _implementation(module: str):
    try:
        return importlib.import_module(module).OrderBook
    except ImportError:
        return None


IMPLEMENTATIONS = {
    "reference": ReferenceBook,
    "python": _implementation("engine.book"),
    "c": _implementation("engine._cbook"),
}
IMPLS = [
    pytest.param(cls, id=name,
                 marks=() if cls else pytest.mark.skip(reason=f"{name} book does not import"))
    for name, cls in IMPLEMENTATIONS.items()
]


def _fields(events):
    """Events with each field's type, so 1 == True or IntEnum == int cannot pass."""
    return [(type(e), [(type(f), f) for f in e]) for e in events]


class Lockstep:
    """The reference and one implementation fed the same commands."""

    def __init__(self, impl_cls, spec, pair: str = PAIR, maker: CommandMaker | None = None):
        args = (pair, spec.min_notional, spec.maker_fee_ppm, spec.taker_fee_ppm, spec.trading)
        self.spec = spec
        self.ref = ReferenceBook(*args)
        self.impl = impl_cls(*args)
        self.auditor = BookAuditor(self.impl, pair, spec.maker_fee_ppm, spec.taker_fee_ppm)
        self.maker = maker or CommandMaker(pair)
        self.history: list = []

    def step(self, op) -> list:
        cmd = self.maker.command(op, self.ref, len(self.history) + 1)
        self.history.append(cmd)
        expected = self.ref.apply(cmd)
        actual = self._apply(cmd)
        if _fields(actual) != _fields(expected):
            raise AssertionError(self._story(f"events differ\nexpected {expected}\n"
                                             f"actual   {actual}"))
        try:
            self.auditor.check(cmd, actual)
        except AssertionError as exc:
            raise AssertionError(self._story(f"invariant broken: {exc}")) from None
        return actual

    def _apply(self, cmd) -> list:
        # Both entry points are API: odd timestamps go through the named method.
        if cmd.ts % 2 == 0:
            return self.impl.apply(cmd)
        fields = cmd._asdict()
        del fields["pair"]
        method = {"Place": "place", "Cancel": "cancel", "Amend": "amend",
                  "CancelAll": "cancel_all", "SetTrading": "set_trading"}[type(cmd).__name__]
        return getattr(self.impl, method)(**fields)

    def compare_dumps(self) -> None:
        want, got = self.ref.dump(), self.impl.dump()
        if got != want:
            raise AssertionError(self._story(
                f"dump() differs: sha256 {hashlib.sha256(want).hexdigest()[:16]} (reference)"
                f" vs {hashlib.sha256(got).hexdigest()[:16]}\nreference orders "
                f"{self.ref.orders()}\nimpl orders {self.impl.orders()}"))

    def restore_impl(self, impl_cls) -> None:
        """Swap the implementation for one restored from the *reference's* bytes."""
        self.impl = impl_cls.restore(self.ref.dump(), self.spec.min_notional,
                                     self.spec.maker_fee_ppm, self.spec.taker_fee_ppm)
        assert self.impl.dump() == self.ref.dump()
        self.auditor = BookAuditor(self.impl, self.ref.pair, self.spec.maker_fee_ppm,
                                   self.spec.taker_fee_ppm)

    def _story(self, what: str) -> str:
        tail = self.history[-60:]
        lines = "\n".join(f"  {c!r}" for c in tail)
        return (f"{what}\nmarket {self.spec}\nafter {len(self.history)} commands"
                f" (last {len(tail)}):\n{lines}")


@pytest.mark.parametrize("impl_cls", IMPLS)
@PROPERTY_SETTINGS
@given(spec=market_specs, ops=op_lists)
def test_matches_reference(impl_cls, spec, ops):
    run = Lockstep(impl_cls, spec)
    for i, op in enumerate(ops, 1):
        run.step(op)
        if i % HASH_EVERY == 0:
            run.compare_dumps()
    run.compare_dumps()


# Prices near 1e11 ticks, quantities near 1e6 lots, ids near 2**62: price * qty * fee
# rate is ~1e21, so a 64-bit intermediate anywhere would show.
WIDE_PRICE, WIDE_QTY, WIDE_FIRST_ID = 1_000_000_007, 999_983, 2**62


@pytest.mark.parametrize("impl_cls", IMPLS)
@settings(PROPERTY_SETTINGS, max_examples=max(EXAMPLES // 4, 10))
@given(spec=market_specs, ops=op_lists)
def test_matches_reference_with_wide_integers(impl_cls, spec, ops):
    wide = MarketSpec(spec.min_notional * WIDE_PRICE * WIDE_QTY, spec.maker_fee_ppm * 97,
                      spec.taker_fee_ppm * 89, spec.trading)
    run = Lockstep(impl_cls, wide, maker=CommandMaker(PAIR, WIDE_PRICE, WIDE_QTY, WIDE_FIRST_ID))
    for op in ops:
        run.step(op)
    run.compare_dumps()


@pytest.mark.parametrize("impl_cls", IMPLS)
@PROPERTY_SETTINGS
@given(spec=market_specs, ops=op_lists)
def test_restored_book_continues_like_reference(impl_cls, spec, ops):
    """dump() of the reference, restored into the implementation mid-run, carries on
    exactly as the reference does (snapshot bytes are the cross-implementation format)."""
    run = Lockstep(impl_cls, spec)
    half = len(ops) // 2
    for op in ops[:half]:
        run.step(op)
    run.restore_impl(impl_cls)
    for op in ops[half:]:
        run.step(op)
    run.compare_dumps()


@pytest.mark.parametrize("impl_cls", IMPLS)
@pytest.mark.parametrize("spec", MARKETS[:4], ids=lambda s: f"mn{s.min_notional}")
def test_seeded_random_walk(impl_cls, spec):
    """20,000 random commands, state compared by sha256 of dump() every 100 commands."""
    r = random.Random(20_240_601 + spec.min_notional)
    run = Lockstep(impl_cls, spec)
    for i in range(1, 20_001):
        run.step(random_op(r))
        if i % 100 == 0:
            want = hashlib.sha256(run.ref.dump()).hexdigest()
            if hashlib.sha256(run.impl.dump()).hexdigest() != want:
                run.compare_dumps()
    run.compare_dumps()


def test_reference_reproduces_standard_workload_totals():
    """The reference alone pins the standard workload's first 100,000 ops (XLIMIT as GTC)."""
    book = ReferenceBook(workload.PAIR)
    fills = filled_lots = cancels = 0
    for cmd in workload.to_commands(workload.operations(100_000)):
        for ev in book.apply(cmd):
            if type(ev) is Trade:
                fills += 1
                filled_lots += ev.qty
            elif type(ev) is Cancelled:
                cancels += 1
    assert (fills, filled_lots, cancels) == (19_349, 494_462, 25_384)
    assert (len(book), book.resting_qty()) == (24_827, 1_247_696)


@pytest.mark.parametrize("impl_cls", IMPLS[1:])
def test_standard_workload_matches_reference(impl_cls):
    """The first 20,000 workload ops: same events, same dump() every 1,000 commands."""
    ref, impl = ReferenceBook(workload.PAIR), impl_cls(workload.PAIR)
    for i, cmd in enumerate(workload.to_commands(workload.operations(20_000)), 1):
        expected, actual = ref.apply(cmd), impl.apply(cmd)
        assert _fields(actual) == _fields(expected), (cmd, expected, actual)
        if i % 1_000 == 0:
            assert impl.dump() == ref.dump(), f"dump differs after {i} commands"
    assert impl.dump() == ref.dump()


def _market(pair: str, spec: MarketSpec) -> Market:
    # tick 0.01 x lot 0.001: one notional unit is 0.00001 quote.
    unit = Decimal("0.00001")
    return Market(pair, "BTC", "USDT", Decimal("0.01"), Decimal("0.001"),
                  spec.min_notional * unit, spec.maker_fee_ppm, spec.taker_fee_ppm,
                  partition=0, trading=spec.trading)


@pytest.mark.parametrize("impl", [
    "python",
    pytest.param("c", marks=() if IMPLEMENTATIONS["c"] else pytest.mark.skip(
        reason="c book does not import")),
])
def test_engine_snapshot_is_reference_sections(impl):
    """Engine.snapshot() over two pairs = the header + each reference book's dump(), in
    pair order; an Engine restored from it carries on exactly like the references."""
    specs = {"ZZZUSDT": MARKETS[2], "AAAUSDT": MARKETS[1]}
    markets = [_market(pair, spec) for pair, spec in specs.items()]
    engine = Engine(markets, impl=impl)
    assert engine.impl == impl and engine.snapshot() == _snapshot_of(
        {pair: ReferenceBook(pair, *spec) for pair, spec in specs.items()})
    refs = {pair: ReferenceBook(pair, *spec) for pair, spec in specs.items()}
    makers = {pair: CommandMaker(pair) for pair in specs}
    r = random.Random(7)
    for i in range(1, 4_001):
        if i == 2_000:
            engine = Engine.restore(markets, engine.snapshot(), impl=impl)
        pair = r.choice(sorted(specs))
        cmd = makers[pair].command(random_op(r), refs[pair], i)
        expected, actual = refs[pair].apply(cmd), engine.apply(cmd)
        assert _fields(actual) == _fields(expected), (i, cmd, expected, actual)
        if i % 100 == 0:
            want = _snapshot_of(refs)
            assert engine.snapshot() == want, f"snapshot differs after {i} commands"
            assert engine.state_hash() == hashlib.sha256(want).hexdigest()


def _snapshot_of(books: dict) -> bytes:
    """domain.py's snapshot layout, assembled here from the reference books' sections."""
    return b"KEEL" + struct.pack("<HI", 1, len(books)) + b"".join(
        books[pair].dump() for pair in sorted(books))
