"""The compiled core (engine._cbook) against the pure book, and what only C can get wrong.

Differential: the standard workload slice and a seeded random mix (every order kind, STP
mode, amend, cancel_all, closed markets, fees, several users) must give the same events
(types included), level changes, queries and dump bytes from both books. Then the C-only
risks: reference counting (no leaked events or ints), bad arguments raising instead of
crashing, values beyond int64 in sums, and damaged snapshot sections.
"""
from __future__ import annotations

import gc
import random
import sys

import pytest

from engine import workload
from engine.book import OrderBook as PyBook
from engine.domain import (
    EVENT_TYPES,
    Amend,
    Cancel,
    CancelAll,
    Cancelled,
    Place,
    Reason,
    SetTrading,
    Trade,
    fee,
)
from engine.snapshot import SnapshotError

cbook = pytest.importorskip("engine._cbook", reason="the compiled core was not built")
CBook = cbook.OrderBook

PAIR = "BENCH"
# (min_notional, maker_fee_ppm, taker_fee_ppm): fee-free, ceil()-sensitive fees, a notional
# floor that rejects small orders.
MARKETS = [(0, 0, 0), (0, 1_000, 2_500), (300, 7, 13)]


def drive(book, cmds, take_every=1):
    """Apply commands one by one; events and level changes taken every `take_every`."""
    events, changes = [], []
    for i, cmd in enumerate(cmds, 1):
        events.extend(book.apply(cmd))
        if i % take_every == 0:
            changes.append(book.take_level_changes())
    changes.append(book.take_level_changes())
    return events, changes


def state(book):
    return (book.dump(), book.orders(), book.depth(1000), book.best_bid(), book.best_ask(),
            len(book), book.resting_qty(), book.seq, book.last_trade_id, book.trading)


def assert_same_events(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert type(g) is type(w) and g == w, f"event {i}: {g!r} != {w!r}"
        # plain ints and bools, as the pure book emits for these fields
        assert all(type(v) in (int, bool, str) for v in g), g


# ---- a seeded random command mix ----

USERS = (1, 2, 3, 4)


def random_commands(n: int, seed: int) -> list:
    r = random.Random(seed)
    placed: list[tuple[int, int, int]] = []     # (order_id, user_id, price)
    next_id = 1
    cmds = []
    for ts in range(n):
        u = r.random()
        user = r.choice(USERS)
        if u < 0.62 or not placed:
            if r.random() < 0.03 and placed:
                oid = r.choice(placed)[0]            # reuse: duplicate if still resting
            else:
                oid, next_id = next_id, next_id + 1
            side, stp = r.randrange(2), r.randrange(4)
            v = r.random()
            qty, quote, tif = r.randint(1, 12), 0, r.choice((0, 0, 0, 1, 2))
            if v < 0.62:
                kind, price = 0, 100 + (r.randint(-2, 6) if side else -r.randint(-2, 6))
            elif v < 0.78:
                kind, price = 2, 100 + (r.randint(-1, 6) if side else -r.randint(-1, 6))
            elif v < 0.85:
                kind, price, qty = 1, r.choice((0, 0, 97, 103)), r.randint(1, 30)
            elif v < 0.92:
                kind, price, qty, quote = 1, r.choice((0, 98, 102)), 0, r.randint(1, 2500)
            elif v < 0.98:   # invalid values
                kind, price = r.randrange(3), r.choice((-1, 0, 1, 100))
                qty, quote = r.choice((-1, 0, 1, 2)), r.choice((0, 0, 1, 50))
            else:            # enums out of range: a malformed request
                kind, price = r.choice((0, 3)), 100
                side, stp = r.choice((side, 2)), r.choice((stp, 4, 99))
            placed.append((oid, user, price))
            cmds.append(Place(PAIR, oid, user, side, kind, tif, price, qty, quote, stp, ts))
            continue
        # recent orders are the likely live ones
        recent = placed[-40:]
        oid, owner, placed_at = r.choice(recent) if r.random() < 0.9 else (10**6 + ts, user, 100)
        actor = owner if r.random() < 0.9 else user
        if u < 0.80:
            cmds.append(Cancel(PAIR, oid, actor, ts))
        elif u < 0.96:
            # mostly its own price (keep or lose priority by qty), else a move or junk
            price = r.choice((placed_at, placed_at, placed_at, 95, 99, 100, 101, 105, 0, -3))
            cmds.append(Amend(PAIR, oid, actor, price, r.choice((-1, 0, 1, 2, 3, 6, 12)), ts))
        elif u < 0.99:
            cmds.append(CancelAll(PAIR, user, ts))
        else:
            cmds.append(SetTrading(PAIR, r.random() < 0.85, ts))
    return cmds


# ---- differential tests ----

@pytest.fixture(scope="module")
def slice_100k():
    return list(workload.to_commands(workload.operations(100_000)))


def test_workload_slice_totals(slice_100k):
    book = CBook(PAIR)
    events = book.apply_many(slice_100k)
    trades = [e for e in events if type(e) is Trade]
    cancels = [e for e in events if type(e) is Cancelled and e.reason == Reason.CANCELED]
    assert (len(trades), sum(t.qty for t in trades), len(cancels)) == (19_349, 494_462, 25_384)
    assert (len(book), book.resting_qty()) == (24_827, 1_247_696)


def test_workload_slice_matches_pure_book(slice_100k):
    pure, fast = PyBook(PAIR), CBook(PAIR)
    want_events, want_changes = drive(pure, slice_100k, take_every=997)
    got_events, got_changes = drive(fast, slice_100k, take_every=997)
    assert_same_events(got_events, want_events)
    assert got_changes == want_changes
    assert state(fast) == state(pure)


@pytest.mark.parametrize("market", MARKETS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_commands_match_pure_book(market, seed):
    cmds = random_commands(4_000, seed)
    pure, fast = PyBook(PAIR, *market), CBook(PAIR, *market)
    kinds = set()
    for i, cmd in enumerate(cmds):
        want, got = pure.apply(cmd), fast.apply(cmd)
        assert_same_events(got, want)
        kinds.update(type(e) for e in got)
        assert fast.take_level_changes() == pure.take_level_changes(), f"command {i}: {cmd}"
        if i % 97 == 0:
            assert state(fast) == state(pure), f"after command {i}: {cmd}"
    assert state(fast) == state(pure)
    assert kinds == set(EVENT_TYPES)     # the mix really exercises every event type


def test_methods_equal_apply_and_apply_many():
    cmds = random_commands(1_500, 7)
    by_apply, by_many, by_method = CBook(PAIR, 0, 10, 20), CBook(PAIR, 0, 10, 20), CBook(
        PAIR, 0, 10, 20)
    events = [e for cmd in cmds for e in by_apply.apply(cmd)]
    assert by_many.apply_many(iter(cmds)) == events
    call = []
    for cmd in cmds:
        fields = cmd._asdict()
        del fields["pair"]
        name = {Place: "place", Cancel: "cancel", Amend: "amend", CancelAll: "cancel_all",
                SetTrading: "set_trading"}[type(cmd)]
        if name == "place":   # positional for one, keywords for the rest
            call += by_method.place(*fields.values())
        else:
            call += getattr(by_method, name)(**fields)
    assert call == events
    assert by_apply.dump() == by_many.dump() == by_method.dump()


# ---- snapshot sections ----

def test_dump_restore_round_trip_across_implementations():
    cmds = random_commands(3_000, 11)
    pure, fast = PyBook(PAIR, 0, 1_000, 2_500), CBook(PAIR, 0, 1_000, 2_500)
    pure.apply_many(cmds[:2_000])
    fast.apply_many(cmds[:2_000])
    section = fast.dump()
    assert section == pure.dump() and len(fast) > 0
    from_pure = CBook.restore(pure.dump(), 0, 1_000, 2_500)
    into_pure = PyBook.restore(section, 0, 1_000, 2_500)
    assert from_pure.dump() == section == into_pure.dump()
    assert from_pure.take_level_changes() == []
    assert (from_pure.maker_fee_ppm, from_pure.taker_fee_ppm, from_pure.pair) == (1_000, 2_500,
                                                                                   PAIR)
    tail = cmds[2_000:]
    want = pure.apply_many(tail)
    assert from_pure.apply_many(tail) == want == fast.apply_many(tail)
    assert from_pure.dump() == pure.dump() == fast.dump()


def test_restore_keeps_seq_trade_id_and_closed_market():
    book = CBook("ÄÖ/€", 5, 1, 2)
    book.place(1, 1, 0, 0, 0, 100, 10, 0, 0, 1)
    book.place(2, 2, 1, 0, 0, 100, 4, 0, 0, 2)
    book.set_trading(False, 3)
    copy = CBook.restore(book.dump(), 5, 1, 2)
    assert (copy.pair, copy.seq, copy.last_trade_id, copy.trading) == ("ÄÖ/€", 5, 1, False)
    assert copy.orders() == book.orders() == [(1, 1, 0, 100, 6, 0)]
    assert copy.min_notional == 5


def _section(records, pair=b"P", trading=1, seq=0, trade_id=0):
    import struct
    body = b"".join(struct.pack("<qqBqqB", *r) for r in records)
    return (struct.pack("<H", len(pair)) + pair
            + struct.pack("<BQQI", trading, seq, trade_id, len(records)) + body)


@pytest.mark.parametrize("section", [
    b"",
    b"\x01",
    _section([])[:-1],                                          # truncated header
    _section([(1, 1, 0, 100, 5, 0)])[:-1],                      # truncated record
    _section([(1, 1, 0, 100, 5, 0)]) + b"\x00",                 # trailing byte
    _section([], pair=b"\xff\xfe"),                             # pair not utf-8
    _section([], trading=2),
    _section([(1, 1, 2, 100, 5, 0)]),                           # side 2
    _section([(1, 1, 0, 100, 5, 4)]),                           # stp 4
    _section([(1, 1, 0, 0, 5, 0)]),                             # price 0
    _section([(1, 1, 0, 100, 0, 0)]),                           # remaining 0
    _section([(1, 1, 0, 100, 5, 0), (1, 2, 1, 101, 5, 0)]),     # id twice
    _section([(1, 1, 0, 99, 5, 0), (2, 2, 0, 100, 5, 0)]),      # bids not best first
    _section([(1, 1, 1, 101, 5, 0), (2, 2, 0, 100, 5, 0)]),     # asks before bids
    _section([(1, 1, 1, 102, 5, 0), (2, 2, 1, 101, 5, 0)]),     # asks not best first
])
def test_damaged_section_raises_snapshot_error(section):
    with pytest.raises(SnapshotError):
        CBook.restore(section)
    with pytest.raises(SnapshotError):   # the pure book agrees it is damaged
        PyBook.restore(section)


def test_restore_accepts_any_buffer_and_the_whole_u64_range():
    section = _section([(7, 3, 1, 101, 5, 2)], seq=9)
    for data in (section, bytearray(section), memoryview(section)):
        assert CBook.restore(data).dump() == section
    section = _section([(-(2**63), -1, 0, 2**63 - 1, 2**63 - 1, 3)], seq=2**64 - 2,
                       trade_id=2**63)
    book = CBook.restore(section)
    assert (book.seq, book.last_trade_id, book.dump()) == (2**64 - 2, 2**63, section)
    assert book.order(-(2**63)) == (-1, 0, 2**63 - 1, 2**63 - 1, 3)
    assert book.cancel(-(2**63), -1, 0)[0].seq == 2**64 - 1


# ---- values beyond int64 in sums ----

def test_sums_and_fees_beyond_int64_match_pure_book():
    big = 2**62
    cmds = [Place(PAIR, 1, 1, 1, 0, 0, big, big, 0, 0, 1),
            Place(PAIR, 2, 2, 1, 0, 0, big, big, 0, 0, 2),
            Place(PAIR, 3, 3, 1, 0, 0, big, big, 0, 0, 3),
            Place(PAIR, 4, 4, 0, 0, 0, big, big + 5, 0, 0, 4)]
    pure, fast = PyBook(PAIR, 0, 10**6, 3), CBook(PAIR, 0, 10**6, 3)
    assert_same_events(fast.apply_many(cmds[:3]), pure.apply_many(cmds[:3]))
    assert fast.resting_qty() == pure.resting_qty() == 3 * big > 2**63
    assert fast.depth(5) == pure.depth(5) == ([], [(big, 3 * big)])
    for n in (0, 1, -1, 10**30, -(10**30)):
        assert fast.depth(n) == pure.depth(n)
    assert_same_events(fast.apply_many(cmds[3:]), pure.apply_many(cmds[3:]))
    assert fast.resting_qty() == pure.resting_qty() == 2 * big - 5
    market_buy = Place(PAIR, 5, 5, 0, 1, 1, 0, big, 0, 0, 5)
    events = fast.apply(market_buy)
    assert_same_events(events, pure.apply(market_buy))
    trade = events[1]
    assert trade.price * trade.qty * 10**6 > 2**127         # the C core's fallback path
    assert trade.maker_fee == fee(trade.price, trade.qty, 10**6)
    assert trade.taker_fee == fee(trade.price, trade.qty, 3) > 2**64
    # a notional beyond int64 is still compared exactly against the minimum
    strict = CBook(PAIR, 2**62)
    assert strict.place(9, 9, 0, 0, 0, 2**40, 2**21, 0, 0, 1)[0].code == -3003
    assert strict.place(9, 9, 0, 0, 0, 2**41, 2**22, 0, 0, 1)[0].order_id == 9


# ---- bad arguments: exceptions, never a crash, and no half-applied command ----

@pytest.mark.parametrize("call", [
    lambda b: b.place(1, 1, 0, 0, 0, "100", 1, 0, 0, 1),
    lambda b: b.place(1, 1, 0, 0, 0, 100.0, 1, 0, 0, 1),
    lambda b: b.place(1, 1, 0, 0, 0, 100, 1, 0, 0),
    lambda b: b.place(1, 1, 0, 0, 0, 100, 1, 0, 0, 1, 2),
    lambda b: b.place(1, 1, 0, 0, 0, 100, 1, 0, 0, ts=1, bogus=2),
    lambda b: b.place(1, 1, 0, 0, 0, 100, 1, 0, 0, 1, ts=1),
    lambda b: b.place(None, 1, 0, 0, 0, 100, 1, 0, 0, 1),
    lambda b: b.cancel(1, None, 1),
    lambda b: b.amend(1, 1, 100, "x", 1),
    lambda b: b.cancel_all("u", 1),
    lambda b: b.set_trading(True, None),
    lambda b: b.apply(None),
    lambda b: b.apply((PAIR, 1, 1, 1)),
    lambda b: b.apply(Cancel(PAIR, 1, 1, "ts")),
    lambda b: b.apply(Cancel(PAIR, 1, 1, 1)._replace(order_id=[])),
    lambda b: b.apply_many(5),
    lambda b: b.apply_many(["not a command"]),
    lambda b: b.depth("3"),
    lambda b: b.order("1"),
    lambda b: CBook(5),
    lambda b: CBook(PAIR, "0"),
    lambda b: CBook.restore("text"),
])
def test_wrong_types_raise_type_error(call):
    book = CBook(PAIR)
    book.place(100, 1, 1, 0, 0, 105, 3, 0, 0, 0)
    before = state(book)
    with pytest.raises(TypeError):
        call(book)
    assert state(book) == before


def test_apply_many_stops_at_a_bad_command_after_whole_commands():
    book = CBook(PAIR)
    with pytest.raises(TypeError):
        book.apply_many([Cancel(PAIR, 1, 1, 1), Cancel(PAIR, 1, 1, None)])
    assert book.seq == 1        # the first command's Rejected, nothing of the second


@pytest.mark.parametrize("call", [
    lambda b: b.place(2**63, 1, 0, 0, 0, 100, 1, 0, 0, 1),
    lambda b: b.place(1, 1, 0, 0, 0, 100, -(2**64), 0, 0, 1),
    lambda b: b.cancel(1, 1, 2**70),
    lambda b: b.amend(100, 1, 2**63, 1, 1),
    lambda b: CBook(PAIR, 2**64),
])
def test_values_beyond_int64_raise_overflow_error(call):
    book = CBook(PAIR)
    book.place(100, 1, 1, 0, 0, 105, 3, 0, 0, 0)
    before = state(book)
    with pytest.raises(OverflowError):
        call(book)
    assert state(book) == before


def test_enum_values_out_of_range_are_rejected_like_the_pure_book():
    for side, kind, tif, stp in [(2, 0, 0, 0), (0, 3, 0, 0), (0, 0, 3, 0), (0, 0, 0, 4),
                                 (-1, 0, 0, 0), (2**80, 0, 0, 0), (0, 0, 0, -(2**80))]:
        want = PyBook(PAIR).place(1, 1, side, kind, tif, 100, 1, 0, stp, 0)
        assert CBook(PAIR).place(1, 1, side, kind, tif, 100, 1, 0, stp, 0) == want
        assert want[0].code == -1100


def test_read_only_attributes_and_subclassed_commands():
    book = CBook(PAIR, 1, 2, 3, False)
    for name in ("pair", "min_notional", "maker_fee_ppm", "taker_fee_ppm", "trading", "seq",
                 "last_trade_id"):
        with pytest.raises(AttributeError):
            setattr(book, name, 1)
    assert (book.pair, book.min_notional, book.maker_fee_ppm, book.taker_fee_ppm,
            book.trading) == (PAIR, 1, 2, 3, False)

    class MyCancel(Cancel):
        __slots__ = ()

    assert book.apply(MyCancel(PAIR, 1, 1, 5)) == PyBook(PAIR).apply(Cancel(PAIR, 1, 1, 5))
    fresh = CBook.__new__(CBook)    # never initialised: empty, usable, no crash
    assert (len(fresh), fresh.best_bid(), fresh.orders(), fresh.dump()) == (
        0, None, [], PyBook("").dump())


# ---- reference counting ----

def test_no_references_leak_per_event():
    """Objects the book puts into events (pair, ts, ids, event classes) get their
    references back when the events die; a leaked incref shows up as a count that grows
    with the number of commands."""
    pair = "".join(["LEAK", "PAIR"])        # a str object of our own
    ts = 10**15 + 1                          # an int object outside the small-int cache
    oid_base = 10**12
    cmds = random_commands(3_000, 5)
    cmds = [c._replace(pair=pair, ts=ts) for c in cmds]
    watched = [pair, ts, *EVENT_TYPES]
    for rate in ((0, 0, 0), (0, 1_000, 2_500)):
        book = CBook(pair, *rate)
        book.apply_many(cmds[:100])          # warm-up
        book.take_level_changes()
        gc.collect()
        before = [sys.getrefcount(o) for o in watched]
        for _ in range(3):
            for cmd in cmds:
                book.apply(cmd)
            book.apply_many(cmds)
            book.take_level_changes(), book.orders(), book.dump(), book.depth(10)
            book.place(oid_base, 1, 0, 0, 0, 1, 1, 0, 0, ts)
            book.order(oid_base), book.cancel(oid_base, 1, ts)
        gc.collect()
        # only the book's own reference to the pair may be new
        assert [sys.getrefcount(o) for o in watched] == before
        del book


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_rss_stays_flat_over_repeated_workloads(slice_100k):
    """A leak of one small object per event would add ~30 MB over these rounds."""
    cmds = slice_100k[:50_000]

    def round_trip():
        book = CBook(PAIR)
        for cmd in cmds:
            book.apply(cmd)
        book.take_level_changes()
        CBook.restore(book.dump()).apply_many(cmds[:5_000])

    for _ in range(2):                       # let the allocators reach their steady state
        round_trip()
    gc.collect()
    start = _rss_bytes()
    for _ in range(6):
        round_trip()
    gc.collect()
    assert _rss_bytes() - start < 8 * 2**20
