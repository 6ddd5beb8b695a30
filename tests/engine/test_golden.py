"""Golden tests: hand-written expected event lists for each command, order type and mode.

Every test runs against each available book implementation (the pure one always, the
compiled core when engine._cbook imports), so both are held to the same goldens. The
expected lists are written out field by field from engine/domain.py's contract.
"""
from __future__ import annotations

import importlib.util

import pytest

from engine.domain import (
    STP,
    Accepted,
    Amended,
    Cancelled,
    Done,
    Expired,
    MarketStatus,
    OrderKind,
    Reason,
    Rejected,
    ResultCode,
    Side,
    TimeInForce,
    Trade,
    fee,
)
from engine.engine import book_class

IMPLS = ["python"] + (["c"] if importlib.util.find_spec("engine._cbook") else [])

P = "T"
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET, MAKER = OrderKind.LIMIT, OrderKind.MARKET, OrderKind.LIMIT_MAKER
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
NONE, E_TAKER, E_MAKER, E_BOTH = STP.NONE, STP.EXPIRE_TAKER, STP.EXPIRE_MAKER, STP.EXPIRE_BOTH
RC = ResultCode


@pytest.fixture(params=IMPLS)
def new_book(request):
    cls = book_class(request.param)

    def make(min_notional=0, maker_ppm=0, taker_ppm=0, trading=True):
        return cls(P, min_notional, maker_ppm, taker_ppm, trading)
    return make


@pytest.fixture
def book(new_book):
    return new_book()


def lim(b, oid, uid, side, price, qty, tif=GTC, stp=NONE, ts=0):
    return b.place(oid, uid, side, LIMIT, tif, price, qty, 0, stp, ts)


def mkt(b, oid, uid, side, qty=0, quote=0, price=0, stp=NONE, ts=0):
    return b.place(oid, uid, side, MARKET, IOC, price, qty, quote, stp, ts)


def maker(b, oid, uid, side, price, qty, ts=0):
    return b.place(oid, uid, side, MAKER, GTC, price, qty, 0, NONE, ts)


def test_event_types_are_the_domain_classes(book):
    events = lim(book, 1, 11, SELL, 100, 1) + lim(book, 2, 12, BUY, 100, 1, ts=2)
    assert [type(e) for e in events] == [Accepted, Accepted, Trade, Done, Done]
    assert all(type(v) is int for v in events[2][1:]), "Trade fields are plain ints"


# ---- LIMIT ----

def test_limit_gtc_rests_then_fills_across_levels(book):
    assert lim(book, 1, 11, SELL, 101, 3, ts=1) == [
        Accepted(P, 1, 1, 1, 11, SELL, LIMIT, GTC, 101, 3, 0)]
    assert lim(book, 2, 12, SELL, 102, 4, ts=2) == [
        Accepted(P, 2, 2, 2, 12, SELL, LIMIT, GTC, 102, 4, 0)]
    assert lim(book, 3, 13, BUY, 102, 10, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, LIMIT, GTC, 102, 10, 0),
        Trade(P, 4, 3, 1, 101, 3, BUY, 1, 11, 3, 13, 0, 0),
        Done(P, 5, 3, 1, 11),
        Trade(P, 6, 3, 2, 102, 4, BUY, 2, 12, 3, 13, 0, 0),
        Done(P, 7, 3, 2, 12),
    ]
    assert book.order(3) == (13, BUY, 102, 3, NONE)
    assert (book.best_bid(), book.best_ask()) == (102, None)
    assert (len(book), book.resting_qty(), book.seq, book.last_trade_id) == (1, 3, 7, 2)


def test_limit_fifo_within_a_level_and_partial_maker(book):
    lim(book, 1, 11, SELL, 100, 5, ts=1)
    lim(book, 2, 12, SELL, 100, 5, ts=2)
    assert lim(book, 3, 13, BUY, 100, 7, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, LIMIT, GTC, 100, 7, 0),
        Trade(P, 4, 3, 1, 100, 5, BUY, 1, 11, 3, 13, 0, 0),
        Done(P, 5, 3, 1, 11),
        Trade(P, 6, 3, 2, 100, 2, BUY, 2, 12, 3, 13, 0, 0),
        Done(P, 7, 3, 3, 13),
    ]
    assert book.order(1) is None
    assert book.order(2) == (12, SELL, 100, 3, NONE)
    assert book.orders() == [(2, 12, SELL, 100, 3, NONE)]


def test_limit_sell_trades_at_the_makers_price(book):
    lim(book, 1, 11, BUY, 105, 2, ts=1)
    assert lim(book, 2, 12, SELL, 100, 2, ts=2) == [
        Accepted(P, 2, 2, 2, 12, SELL, LIMIT, GTC, 100, 2, 0),
        Trade(P, 3, 2, 1, 105, 2, SELL, 1, 11, 2, 12, 0, 0),
        Done(P, 4, 2, 1, 11),
        Done(P, 5, 2, 2, 12),
    ]


def test_limit_ioc_remainder_expires(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    assert lim(book, 2, 12, BUY, 101, 5, tif=IOC, ts=2) == [
        Accepted(P, 2, 2, 2, 12, BUY, LIMIT, IOC, 101, 5, 0),
        Trade(P, 3, 2, 1, 100, 2, BUY, 1, 11, 2, 12, 0, 0),
        Done(P, 4, 2, 1, 11),
        Expired(P, 5, 2, 2, 12, 3, Reason.IOC_REMAINDER),
    ]
    assert len(book) == 0
    assert lim(book, 3, 12, BUY, 99, 4, tif=IOC, ts=3) == [
        Accepted(P, 6, 3, 3, 12, BUY, LIMIT, IOC, 99, 4, 0),
        Expired(P, 7, 3, 3, 12, 4, Reason.IOC_REMAINDER),
    ]
    assert len(book) == 0


def test_limit_fok_not_fillable_then_fillable(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 12, SELL, 101, 2, ts=2)
    before = book.orders()
    assert lim(book, 3, 13, BUY, 101, 5, tif=FOK, ts=3) == [
        Rejected(P, 3, 3, 3, 13, RC.FOK_NOT_FILLABLE)]
    # Only 2 lots at acceptable prices (<= 100).
    assert lim(book, 4, 13, BUY, 100, 3, tif=FOK, ts=4) == [
        Rejected(P, 4, 4, 4, 13, RC.FOK_NOT_FILLABLE)]
    assert book.orders() == before
    assert lim(book, 5, 13, BUY, 101, 4, tif=FOK, ts=5) == [
        Accepted(P, 5, 5, 5, 13, BUY, LIMIT, FOK, 101, 4, 0),
        Trade(P, 6, 5, 1, 100, 2, BUY, 1, 11, 5, 13, 0, 0),
        Done(P, 7, 5, 1, 11),
        Trade(P, 8, 5, 2, 101, 2, BUY, 2, 12, 5, 13, 0, 0),
        Done(P, 9, 5, 2, 12),
        Done(P, 10, 5, 5, 13),
    ]
    assert len(book) == 0


def _fok_self_setup(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 13, SELL, 100, 2, ts=2)     # the taker's own order
    lim(book, 3, 12, SELL, 101, 5, ts=3)


@pytest.mark.parametrize("stp", [E_TAKER, E_BOTH])
def test_fok_walk_ends_at_own_order_when_taker_would_expire(book, stp):
    _fok_self_setup(book)
    assert lim(book, 4, 13, BUY, 101, 4, tif=FOK, stp=stp, ts=4) == [
        Rejected(P, 4, 4, 4, 13, RC.FOK_NOT_FILLABLE)]
    assert len(book) == 3


def test_fok_walk_skips_own_order_with_expire_maker(book):
    _fok_self_setup(book)
    assert lim(book, 4, 13, BUY, 101, 4, tif=FOK, stp=E_MAKER, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, FOK, 101, 4, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Expired(P, 7, 4, 2, 13, 2, Reason.SELF_TRADE),
        Trade(P, 8, 4, 2, 101, 2, BUY, 3, 12, 4, 13, 0, 0),
        Done(P, 9, 4, 4, 13),
    ]
    assert book.orders() == [(3, 12, SELL, 101, 3, NONE)]


def test_fok_counts_own_order_with_stp_none(book):
    _fok_self_setup(book)
    assert lim(book, 4, 13, BUY, 100, 4, tif=FOK, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, FOK, 100, 4, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Trade(P, 7, 4, 2, 100, 2, BUY, 2, 13, 4, 13, 0, 0),
        Done(P, 8, 4, 2, 13),
        Done(P, 9, 4, 4, 13),
    ]


# ---- LIMIT_MAKER ----

def test_limit_maker_accepts_and_rejects_would_cross(book):
    lim(book, 1, 11, SELL, 101, 5, ts=1)
    assert maker(book, 2, 12, BUY, 100, 3, ts=2) == [
        Accepted(P, 2, 2, 2, 12, BUY, MAKER, GTC, 100, 3, 0)]
    assert book.order(2) == (12, BUY, 100, 3, NONE)
    assert maker(book, 3, 12, BUY, 101, 3, ts=3) == [
        Rejected(P, 3, 3, 3, 12, RC.POST_ONLY_WOULD_CROSS)]
    assert maker(book, 4, 12, SELL, 100, 3, ts=4) == [
        Rejected(P, 4, 4, 4, 12, RC.POST_ONLY_WOULD_CROSS)]
    assert maker(book, 5, 12, SELL, 101, 3, ts=5) == [
        Accepted(P, 5, 5, 5, 12, SELL, MAKER, GTC, 101, 3, 0)]
    assert book.depth(5) == ([(100, 3)], [(101, 8)])


# ---- MARKET by quantity ----

def test_market_by_qty_sweeps_then_expires_no_liquidity(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 12, SELL, 105, 3, ts=2)
    assert mkt(book, 3, 13, BUY, qty=4, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, MARKET, IOC, 0, 4, 0),
        Trade(P, 4, 3, 1, 100, 2, BUY, 1, 11, 3, 13, 0, 0),
        Done(P, 5, 3, 1, 11),
        Trade(P, 6, 3, 2, 105, 2, BUY, 2, 12, 3, 13, 0, 0),
        Done(P, 7, 3, 3, 13),
    ]
    assert mkt(book, 4, 13, BUY, qty=5, ts=4) == [
        Accepted(P, 8, 4, 4, 13, BUY, MARKET, IOC, 0, 5, 0),
        Trade(P, 9, 4, 3, 105, 1, BUY, 2, 12, 4, 13, 0, 0),
        Done(P, 10, 4, 2, 12),
        Expired(P, 11, 4, 4, 13, 4, Reason.NO_LIQUIDITY),
    ]
    assert mkt(book, 5, 13, SELL, qty=2, ts=5) == [
        Accepted(P, 12, 5, 5, 13, SELL, MARKET, IOC, 0, 2, 0),
        Expired(P, 13, 5, 5, 13, 2, Reason.NO_LIQUIDITY),
    ]


def test_market_by_qty_stops_at_protection_price(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 12, SELL, 105, 3, ts=2)
    assert mkt(book, 3, 13, BUY, qty=4, price=104, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, MARKET, IOC, 104, 4, 0),
        Trade(P, 4, 3, 1, 100, 2, BUY, 1, 11, 3, 13, 0, 0),
        Done(P, 5, 3, 1, 11),
        Expired(P, 6, 3, 3, 13, 2, Reason.NO_LIQUIDITY),
    ]
    assert book.orders() == [(2, 12, SELL, 105, 3, NONE)]
    lim(book, 4, 11, BUY, 100, 2, ts=4)
    lim(book, 5, 12, BUY, 95, 3, ts=5)
    assert mkt(book, 6, 13, SELL, qty=5, price=96, ts=6) == [
        Accepted(P, 9, 6, 6, 13, SELL, MARKET, IOC, 96, 5, 0),
        Trade(P, 10, 6, 2, 100, 2, SELL, 4, 11, 6, 13, 0, 0),
        Done(P, 11, 6, 4, 11),
        Expired(P, 12, 6, 6, 13, 3, Reason.NO_LIQUIDITY),
    ]


# ---- MARKET by quote ----

def test_market_by_quote_stops_when_quote_left_buys_no_lot(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 12, SELL, 110, 5, ts=2)
    # 450: 2 lots at 100 (200), then 250 // 110 = 2 lots (220), then 30 // 110 == 0: stop.
    assert mkt(book, 3, 13, BUY, quote=450, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, MARKET, IOC, 0, 0, 450),
        Trade(P, 4, 3, 1, 100, 2, BUY, 1, 11, 3, 13, 0, 0),
        Done(P, 5, 3, 1, 11),
        Trade(P, 6, 3, 2, 110, 2, BUY, 2, 12, 3, 13, 0, 0),
        Expired(P, 7, 3, 3, 13, 30, Reason.NO_LIQUIDITY),
    ]
    assert book.order(2) == (12, SELL, 110, 3, NONE)


def test_market_by_quote_spent_exactly_is_done(book):
    lim(book, 1, 11, SELL, 100, 5, ts=1)
    assert mkt(book, 2, 13, BUY, quote=200, ts=2) == [
        Accepted(P, 2, 2, 2, 13, BUY, MARKET, IOC, 0, 0, 200),
        Trade(P, 3, 2, 1, 100, 2, BUY, 1, 11, 2, 13, 0, 0),
        Done(P, 4, 2, 2, 13),
    ]
    # Too little quote for even one lot at the best price: no trade at all.
    assert mkt(book, 3, 13, BUY, quote=99, ts=3) == [
        Accepted(P, 5, 3, 3, 13, BUY, MARKET, IOC, 0, 0, 99),
        Expired(P, 6, 3, 3, 13, 99, Reason.NO_LIQUIDITY),
    ]
    assert book.order(1) == (11, SELL, 100, 3, NONE)


def test_market_sell_by_quote_and_with_protection(book):
    lim(book, 1, 11, BUY, 100, 5, ts=1)
    assert mkt(book, 2, 13, SELL, quote=250, ts=2) == [
        Accepted(P, 2, 2, 2, 13, SELL, MARKET, IOC, 0, 0, 250),
        Trade(P, 3, 2, 1, 100, 2, SELL, 1, 11, 2, 13, 0, 0),
        Expired(P, 4, 2, 2, 13, 50, Reason.NO_LIQUIDITY),
    ]
    lim(book, 3, 11, SELL, 100, 1, ts=3)     # crosses the bid: trades 1 lot
    lim(book, 4, 11, SELL, 110, 5, ts=4)
    lim(book, 5, 12, SELL, 101, 1, ts=5)
    assert mkt(book, 6, 13, BUY, quote=1000, price=105, ts=6) == [
        Accepted(P, 10, 6, 6, 13, BUY, MARKET, IOC, 105, 0, 1000),
        Trade(P, 11, 6, 3, 101, 1, BUY, 5, 12, 6, 13, 0, 0),
        Done(P, 12, 6, 5, 12),
        Expired(P, 13, 6, 6, 13, 899, Reason.NO_LIQUIDITY),
    ]


# ---- self-trade prevention ----

def _stp_setup(book):
    lim(book, 1, 11, SELL, 100, 2, ts=1)
    lim(book, 2, 13, SELL, 100, 3, stp=E_BOTH, ts=2)   # the taker's own; its stp is moot
    lim(book, 3, 12, SELL, 101, 4, ts=3)


def test_stp_expire_taker(book):
    _stp_setup(book)
    assert lim(book, 4, 13, BUY, 101, 6, stp=E_TAKER, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, GTC, 101, 6, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Expired(P, 7, 4, 4, 13, 4, Reason.SELF_TRADE),
    ]
    assert [o[0] for o in book.orders()] == [2, 3]


def test_stp_expire_maker(book):
    _stp_setup(book)
    assert lim(book, 4, 13, BUY, 101, 6, stp=E_MAKER, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, GTC, 101, 6, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Expired(P, 7, 4, 2, 13, 3, Reason.SELF_TRADE),
        Trade(P, 8, 4, 2, 101, 4, BUY, 3, 12, 4, 13, 0, 0),
        Done(P, 9, 4, 3, 12),
        Done(P, 10, 4, 4, 13),
    ]
    assert len(book) == 0


def test_stp_expire_both(book):
    _stp_setup(book)
    assert lim(book, 4, 13, BUY, 101, 6, stp=E_BOTH, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, GTC, 101, 6, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Expired(P, 7, 4, 2, 13, 3, Reason.SELF_TRADE),
        Expired(P, 8, 4, 4, 13, 4, Reason.SELF_TRADE),
    ]
    assert book.orders() == [(3, 12, SELL, 101, 4, NONE)]


def test_stp_none_trades_with_itself(book):
    _stp_setup(book)
    assert lim(book, 4, 13, BUY, 101, 6, ts=4) == [
        Accepted(P, 4, 4, 4, 13, BUY, LIMIT, GTC, 101, 6, 0),
        Trade(P, 5, 4, 1, 100, 2, BUY, 1, 11, 4, 13, 0, 0),
        Done(P, 6, 4, 1, 11),
        Trade(P, 7, 4, 2, 100, 3, BUY, 2, 13, 4, 13, 0, 0),
        Done(P, 8, 4, 2, 13),
        Trade(P, 9, 4, 3, 101, 1, BUY, 3, 12, 4, 13, 0, 0),
        Done(P, 10, 4, 4, 13),
    ]
    assert book.orders() == [(3, 12, SELL, 101, 3, NONE)]


def test_stp_expire_maker_then_taker_rests(book):
    lim(book, 1, 13, SELL, 100, 2, ts=1)
    assert lim(book, 2, 13, BUY, 100, 5, stp=E_MAKER, ts=2) == [
        Accepted(P, 2, 2, 2, 13, BUY, LIMIT, GTC, 100, 5, 0),
        Expired(P, 3, 2, 1, 13, 2, Reason.SELF_TRADE),
    ]
    assert book.orders() == [(2, 13, BUY, 100, 5, E_MAKER)]


def test_stp_quote_taker_expires_with_its_unspent_quote(book):
    lim(book, 1, 13, SELL, 100, 5, ts=1)
    assert mkt(book, 2, 13, BUY, quote=500, stp=E_TAKER, ts=2) == [
        Accepted(P, 2, 2, 2, 13, BUY, MARKET, IOC, 0, 0, 500),
        Expired(P, 3, 2, 2, 13, 500, Reason.SELF_TRADE),
    ]


# ---- amend ----

def _amend_setup(book):
    lim(book, 1, 11, BUY, 100, 5, ts=1)
    lim(book, 2, 12, BUY, 100, 5, ts=2)
    lim(book, 3, 13, SELL, 105, 5, ts=3)


def test_amend_reduce_keeps_priority(book):
    _amend_setup(book)
    assert book.amend(1, 11, 100, 3, 4) == [Amended(P, 4, 4, 1, 11, 100, 3, True)]
    assert book.depth(1) == ([(100, 8)], [(105, 5)])
    assert mkt(book, 4, 14, SELL, qty=4, ts=5) == [
        Accepted(P, 5, 5, 4, 14, SELL, MARKET, IOC, 0, 4, 0),
        Trade(P, 6, 5, 1, 100, 3, SELL, 1, 11, 4, 14, 0, 0),
        Done(P, 7, 5, 1, 11),
        Trade(P, 8, 5, 2, 100, 1, SELL, 2, 12, 4, 14, 0, 0),
        Done(P, 9, 5, 4, 14),
    ]
    # Same price, same quantity: still an amendment, priority kept.
    assert book.amend(2, 12, 100, 4, 6) == [Amended(P, 10, 6, 2, 12, 100, 4, True)]


def test_amend_never_enlarges(book):
    """An amend may not add lots, nor (for a buy) notional: accounts' hold for the
    order cannot see fills still in flight, so only the engine can refuse it."""
    _amend_setup(book)
    before = book.orders()
    cases = [
        ((1, 11, 100, 6), RC.AMEND_WOULD_ENLARGE),    # buy: more lots, same price
        ((1, 11, 101, 5), RC.AMEND_WOULD_ENLARGE),    # buy: 505 > 500 notional
        ((1, 11, 50, 6), RC.AMEND_WOULD_ENLARGE),     # buy: less notional, more lots
        ((3, 13, 105, 6), RC.AMEND_WOULD_ENLARGE),    # sell: more lots
        ((3, 13, 200, 6), RC.AMEND_WOULD_ENLARGE),
        ((1, 11, 105, 6), RC.AMEND_WOULD_CROSS),      # cross is checked first
    ]
    for seq, ((oid, uid, price, qty), code) in enumerate(cases, start=4):
        assert book.amend(oid, uid, price, qty, seq) == [Rejected(P, seq, seq, oid, uid, code)]
    assert book.orders() == before                    # order 1 still first at 100
    # A sell may reprice upwards with its lots (it holds base, not quote).
    assert book.amend(3, 13, 200, 5, 10) == [Amended(P, 10, 10, 3, 13, 200, 5, False)]
    # A buy may reprice upwards if its notional does not rise: 104 * 4 = 416 <= 500.
    assert book.amend(1, 11, 104, 4, 11) == [Amended(P, 11, 11, 1, 11, 104, 4, False)]
    assert book.amend(1, 11, 104, 5, 12) == [Rejected(P, 12, 12, 1, 11,
                                                      RC.AMEND_WOULD_ENLARGE)]


def test_amend_enlarge_is_judged_on_what_is_left(new_book):
    """The limit is the order's remaining after fills, not its original size: this is
    the case accounts cannot judge (the fills' settlements may not have reached it)."""
    book = new_book()
    lim(book, 1, 11, BUY, 90, 8, ts=1)
    assert [type(e) for e in lim(book, 2, 12, SELL, 90, 7, ts=2)] == [Accepted, Trade, Done]
    assert book.order(1) == (11, BUY, 90, 1, NONE)
    assert book.amend(1, 11, 39, 4, 3) == [Rejected(P, 5, 3, 1, 11, RC.AMEND_WOULD_ENLARGE)]
    assert book.amend(1, 11, 90, 2, 4) == [Rejected(P, 6, 4, 1, 11, RC.AMEND_WOULD_ENLARGE)]
    assert book.order(1) == (11, BUY, 90, 1, NONE)
    # Equal notional at a higher price is allowed (60 * 10 == 100 * 6), one more is not.
    lim(book, 3, 13, BUY, 60, 10, ts=5)                     # seq 7
    assert book.amend(3, 13, 101, 6, 6) == [Rejected(P, 8, 6, 3, 13, RC.AMEND_WOULD_ENLARGE)]
    assert book.amend(3, 13, 100, 6, 7) == [Amended(P, 9, 7, 3, 13, 100, 6, False)]
    assert book.order(3) == (13, BUY, 100, 6, NONE)


def test_amend_price_change_loses_priority(book):
    _amend_setup(book)
    assert book.amend(1, 11, 99, 5, 4) == [Amended(P, 4, 4, 1, 11, 99, 5, False)]
    assert book.depth(5) == ([(100, 5), (99, 5)], [(105, 5)])
    # Back to the old price, with less: still behind order 2 (a price change moves it).
    assert book.amend(1, 11, 100, 4, 5) == [Amended(P, 5, 5, 1, 11, 100, 4, False)]
    assert book.orders() == [(2, 12, BUY, 100, 5, NONE), (1, 11, BUY, 100, 4, NONE),
                             (3, 13, SELL, 105, 5, NONE)]


def test_amend_rejections_leave_the_book_alone(new_book):
    book = new_book(min_notional=400)
    _amend_setup(book)
    before = book.orders()
    cases = [
        ((1, 11, 105, 5), RC.AMEND_WOULD_CROSS),     # buy at >= best ask
        ((3, 13, 100, 5), RC.AMEND_WOULD_CROSS),     # sell at <= best bid
        ((99, 11, 100, 5), RC.UNKNOWN_ORDER),
        ((1, 12, 100, 5), RC.UNKNOWN_ORDER),         # someone else's order
        ((99, 11, 0, 0), RC.UNKNOWN_ORDER),          # unknown comes first
        ((1, 11, 0, 5), RC.INVALID_PRICE),
        ((1, 11, -1, 0), RC.INVALID_PRICE),
        ((1, 11, 100, 0), RC.INVALID_QUANTITY),
        ((1, 11, 100, 3), RC.BELOW_MIN_NOTIONAL),
        ((1, 11, 105, 3), RC.BELOW_MIN_NOTIONAL),    # notional before the cross check
    ]
    for seq, ((oid, uid, price, qty), code) in enumerate(cases, start=4):
        assert book.amend(oid, uid, price, qty, seq) == [Rejected(P, seq, seq, oid, uid, code)]
    assert book.orders() == before
    assert book.set_trading(False, 20) == [MarketStatus(P, 14, 20, False)]
    assert book.amend(1, 11, 100, 4, 21) == [Rejected(P, 15, 21, 1, 11, RC.MARKET_CLOSED)]
    # Closed is checked before the order is looked up.
    assert book.amend(99, 11, 100, 4, 22) == [Rejected(P, 16, 22, 99, 11, RC.MARKET_CLOSED)]
    assert book.orders() == before


# ---- cancel / cancel_all ----

def test_cancel_own_foreign_unknown_and_gone(book):
    lim(book, 1, 11, SELL, 100, 5, ts=1)
    assert book.cancel(1, 12, 2) == [Rejected(P, 2, 2, 1, 12, RC.UNKNOWN_ORDER)]
    assert book.cancel(7, 11, 3) == [Rejected(P, 3, 3, 7, 11, RC.UNKNOWN_ORDER)]
    assert book.order(1) == (11, SELL, 100, 5, NONE)
    lim(book, 2, 12, BUY, 100, 2, ts=4)                      # seq 4..6, leaves 3 lots
    assert book.cancel(1, 11, 5) == [Cancelled(P, 7, 5, 1, 11, 3, Reason.CANCELED)]
    assert (len(book), book.depth(5)) == (0, ([], []))
    assert book.cancel(1, 11, 6) == [Rejected(P, 8, 6, 1, 11, RC.UNKNOWN_ORDER)]
    lim(book, 3, 11, SELL, 100, 1, ts=7)                     # seq 9
    lim(book, 4, 12, BUY, 100, 1, ts=8)                      # seq 10..13, both filled
    assert book.cancel(3, 11, 9) == [Rejected(P, 14, 9, 3, 11, RC.UNKNOWN_ORDER)]
    assert book.cancel(4, 12, 10) == [Rejected(P, 15, 10, 4, 12, RC.UNKNOWN_ORDER)]


def test_cancel_all_in_ascending_order_id(book):
    lim(book, 5, 11, BUY, 90, 1, ts=1)
    lim(book, 2, 11, SELL, 110, 2, ts=2)
    lim(book, 3, 12, BUY, 95, 3, ts=3)
    lim(book, 9, 11, BUY, 90, 4, ts=4)
    assert book.cancel_all(11, 5) == [
        Cancelled(P, 5, 5, 2, 11, 2, Reason.CANCEL_ALL),
        Cancelled(P, 6, 5, 5, 11, 1, Reason.CANCEL_ALL),
        Cancelled(P, 7, 5, 9, 11, 4, Reason.CANCEL_ALL),
    ]
    assert book.orders() == [(3, 12, BUY, 95, 3, NONE)]
    assert book.cancel_all(11, 6) == []
    assert book.cancel_all(77, 7) == []
    assert book.seq == 7
    book.set_trading(False, 8)
    assert book.cancel_all(12, 9) == [Cancelled(P, 9, 9, 3, 12, 3, Reason.CANCEL_ALL)]
    assert len(book) == 0


# ---- trading status ----

def test_set_trading_closes_place_and_amend_not_cancel(book):
    assert book.set_trading(False, 1) == [MarketStatus(P, 1, 1, False)]
    assert book.trading is False
    assert lim(book, 1, 11, BUY, 100, 1, ts=2) == [Rejected(P, 2, 2, 1, 11, RC.MARKET_CLOSED)]
    assert mkt(book, 2, 11, BUY, qty=1, ts=3) == [Rejected(P, 3, 3, 2, 11, RC.MARKET_CLOSED)]
    assert book.set_trading(True, 4) == [MarketStatus(P, 4, 4, True)]
    assert lim(book, 1, 11, BUY, 100, 1, ts=5) == [
        Accepted(P, 5, 5, 1, 11, BUY, LIMIT, GTC, 100, 1, 0)]
    # Closed is validation step 1, before the duplicate id and the bad price.
    assert book.set_trading(False, 6) == [MarketStatus(P, 6, 6, False)]
    assert lim(book, 1, 11, BUY, 0, 0, ts=7) == [Rejected(P, 7, 7, 1, 11, RC.MARKET_CLOSED)]
    assert book.set_trading(False, 8) == [MarketStatus(P, 8, 8, False)]
    assert book.cancel(1, 11, 9) == [Cancelled(P, 9, 9, 1, 11, 1, Reason.CANCELED)]


def test_book_created_closed(new_book):
    book = new_book(trading=False)
    assert book.trading is False
    assert lim(book, 1, 11, BUY, 100, 1, ts=1) == [Rejected(P, 1, 1, 1, 11, RC.MARKET_CLOSED)]


# ---- fees ----

def test_fees_round_up_on_the_trade_price(new_book):
    book = new_book(maker_ppm=1000, taker_ppm=2500)
    lim(book, 1, 11, SELL, 333, 7, ts=1)
    # 2331 notional: maker 2.331 -> 3, taker 5.8275 -> 6.
    assert lim(book, 2, 12, BUY, 333, 7, ts=2) == [
        Accepted(P, 2, 2, 2, 12, BUY, LIMIT, GTC, 333, 7, 0),
        Trade(P, 3, 2, 1, 333, 7, BUY, 1, 11, 2, 12, 3, 6),
        Done(P, 4, 2, 1, 11),
        Done(P, 5, 2, 2, 12),
    ]
    lim(book, 3, 11, SELL, 500, 4, ts=3)
    # 2000 notional: exact, no rounding (2 and 5).
    assert lim(book, 4, 12, BUY, 600, 4, ts=4)[1] == Trade(P, 8, 4, 2, 500, 4, BUY, 3, 11, 4,
                                                         12, 2, 5)
    lim(book, 5, 11, SELL, 300, 3, ts=5)
    # Fees use the trade (maker's) price: 900 notional -> 0.9 -> 1 and 2.25 -> 3.
    assert lim(book, 6, 12, BUY, 400, 3, ts=6)[1] == Trade(P, 13, 6, 3, 300, 3, BUY, 5, 11, 6,
                                                          12, 1, 3)
    assert (fee(333, 7, 1000), fee(333, 7, 2500), fee(500, 4, 2500), fee(300, 3, 1000)) == \
        (3, 6, 5, 1)


def test_fee_is_zero_only_at_rate_zero(new_book):
    book = new_book(maker_ppm=1, taker_ppm=0)
    lim(book, 1, 11, SELL, 1, 1, ts=1)
    assert lim(book, 2, 12, BUY, 1, 1, ts=2)[1] == Trade(P, 3, 2, 1, 1, 1, BUY, 1, 11, 2, 12,
                                                        1, 0)


# ---- place validation: every code, in the contract's order ----

PLACE_REJECTIONS = [
    # (oid, side, kind, tif, price, qty, quote) -> code; book: min_notional 1000,
    # order 1 = SELL 200 x 10.
    ((1, BUY, LIMIT, GTC, 0, 0, 0), RC.DUPLICATE_ORDER_ID),
    ((2, BUY, LIMIT, GTC, 0, 10, 0), RC.INVALID_PRICE),
    ((2, BUY, LIMIT, GTC, -5, 10, 0), RC.INVALID_PRICE),
    ((2, BUY, MAKER, GTC, 0, 10, 0), RC.INVALID_PRICE),
    ((2, BUY, MARKET, IOC, -1, 10, 0), RC.INVALID_PRICE),
    ((2, BUY, LIMIT, GTC, 0, 0, 0), RC.INVALID_PRICE),          # price before quantity
    ((2, BUY, LIMIT, GTC, 100, 0, 0), RC.INVALID_QUANTITY),
    ((2, BUY, LIMIT, GTC, 100, -1, 0), RC.INVALID_QUANTITY),
    ((2, BUY, LIMIT, GTC, 100, 20, 5), RC.INVALID_QUANTITY),
    ((2, BUY, MAKER, GTC, 100, 20, 5), RC.INVALID_QUANTITY),
    ((2, BUY, MARKET, IOC, 0, 0, 0), RC.INVALID_QUANTITY),
    ((2, BUY, MARKET, IOC, 0, 5, 5000), RC.INVALID_QUANTITY),
    ((2, BUY, MARKET, IOC, 0, -1, 0), RC.INVALID_QUANTITY),
    ((2, BUY, MARKET, IOC, 0, 0, -5), RC.INVALID_QUANTITY),
    ((2, BUY, LIMIT, GTC, 100, 9, 0), RC.BELOW_MIN_NOTIONAL),
    ((2, BUY, MARKET, IOC, 0, 0, 999), RC.BELOW_MIN_NOTIONAL),
    ((2, BUY, MAKER, GTC, 200, 1, 0), RC.BELOW_MIN_NOTIONAL),   # before the cross check
    ((2, BUY, LIMIT, FOK, 100, 9, 0), RC.BELOW_MIN_NOTIONAL),   # before the FOK walk
    ((2, BUY, MAKER, GTC, 200, 10, 0), RC.POST_ONLY_WOULD_CROSS),
    ((2, BUY, LIMIT, FOK, 200, 11, 0), RC.FOK_NOT_FILLABLE),
    # Not a numbered step: an out-of-range enum is a malformed request.
    ((2, 2, LIMIT, GTC, 100, 10, 0), RC.INVALID_REQUEST),
    ((2, BUY, 7, GTC, 100, 10, 0), RC.INVALID_REQUEST),
    ((2, BUY, LIMIT, 5, 100, 10, 0), RC.INVALID_REQUEST),
]


@pytest.mark.parametrize("args,code", PLACE_REJECTIONS)
def test_place_rejections(new_book, args, code):
    book = new_book(min_notional=1000)
    lim(book, 1, 11, SELL, 200, 10, ts=1)
    oid, side, kind, tif, price, qty, quote = args
    assert book.place(oid, 12, side, kind, tif, price, qty, quote, NONE, 5) == [
        Rejected(P, 2, 5, oid, 12, code)]
    assert book.orders() == [(1, 11, SELL, 200, 10, NONE)]
    assert book.seq == 2


@pytest.mark.parametrize("args", [
    (BUY, LIMIT, GTC, 100, 10, 0),      # notional exactly the minimum
    (BUY, MARKET, IOC, 0, 0, 1000),     # quote exactly the minimum
    (BUY, MARKET, IOC, 0, 1, 0),        # MARKET by qty: no notional check
    (BUY, MARKET, IOC, 150, 1, 0),      # protection price below the ask: accepted, expires
])
def test_place_boundaries_are_accepted(new_book, args):
    book = new_book(min_notional=1000)
    lim(book, 1, 11, SELL, 200, 10, ts=1)
    side, kind, tif, price, qty, quote = args
    events = book.place(2, 12, side, kind, tif, price, qty, quote, NONE, 5)
    assert events[0] == Accepted(P, 2, 5, 2, 12, side, kind, tif, price, qty, quote)


def test_every_engine_result_code_is_pinned():
    """Each engine (-3xxx) code the book can emit appears in a golden above.
    TICK/LOT violations are decided at the API edge (engine.markets) and
    SELF_TRADE_PREVENTED is never a rejection: STP expires orders instead."""
    pinned = {code for _, code in PLACE_REJECTIONS} | {
        RC.UNKNOWN_ORDER, RC.AMEND_WOULD_CROSS, RC.AMEND_WOULD_ENLARGE, RC.MARKET_CLOSED}
    engine_codes = {c for c in RC if -3999 <= c <= -3000}
    not_emitted = {RC.TICK_VIOLATION, RC.LOT_VIOLATION, RC.SELF_TRADE_PREVENTED}
    assert engine_codes - not_emitted <= pinned


# ---- seq, apply, depth and level changes ----

def _script(book):
    from engine.domain import Amend, Cancel, CancelAll, Place, SetTrading
    return [
        Place(P, 1, 11, SELL, LIMIT, GTC, 101, 5, 0, NONE, 1),
        Place(P, 2, 12, SELL, LIMIT, GTC, 102, 5, 0, NONE, 2),
        Place(P, 2, 12, SELL, LIMIT, GTC, 102, 5, 0, NONE, 3),       # duplicate
        Place(P, 3, 13, BUY, MARKET, IOC, 0, 7, 0, NONE, 4),
        Amend(P, 2, 12, 102, 2, 5),
        Cancel(P, 9, 12, 6),
        Place(P, 4, 14, BUY, LIMIT, GTC, 100, 3, 0, NONE, 7),
        SetTrading(P, False, 8),
        Place(P, 5, 14, BUY, LIMIT, GTC, 100, 3, 0, NONE, 9),
        SetTrading(P, True, 10),
        Place(P, 6, 15, SELL, LIMIT, IOC, 99, 9, 0, NONE, 11),
        CancelAll(P, 12, 12),
    ]


def test_seq_and_trade_ids_are_contiguous(new_book):
    book = new_book()
    events = book.apply_many(_script(book))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    trades = [e for e in events if type(e) is Trade]
    assert [t.trade_id for t in trades] == [1, 2, 3]
    assert (book.seq, book.last_trade_id) == (len(events), 3)
    one_by_one = new_book()
    assert [e for cmd in _script(one_by_one) for e in one_by_one.apply(cmd)] == events
    assert book.dump() == one_by_one.dump()


def test_depth_aggregates_levels_best_first(book):
    lim(book, 1, 11, BUY, 100, 5)
    lim(book, 2, 12, BUY, 100, 3)
    lim(book, 3, 13, BUY, 99, 2)
    lim(book, 4, 14, BUY, 98, 1)
    lim(book, 5, 15, SELL, 101, 4)
    lim(book, 6, 16, SELL, 103, 6)
    assert book.depth(2) == ([(100, 8), (99, 2)], [(101, 4), (103, 6)])
    assert book.depth(10) == ([(100, 8), (99, 2), (98, 1)], [(101, 4), (103, 6)])
    assert book.depth(0) == ([], [])
    assert (book.best_bid(), book.best_ask(), book.resting_qty(), len(book)) == (100, 101, 21, 6)


def test_take_level_changes(book):
    assert book.take_level_changes() == []
    lim(book, 1, 11, BUY, 100, 5)
    lim(book, 2, 12, BUY, 100, 3)
    lim(book, 3, 13, BUY, 99, 2)
    lim(book, 4, 14, BUY, 98, 1)
    lim(book, 5, 15, SELL, 103, 6)
    lim(book, 6, 16, SELL, 101, 4)
    assert book.take_level_changes() == [
        (BUY, 98, 1), (BUY, 99, 2), (BUY, 100, 8), (SELL, 101, 4), (SELL, 103, 6)]
    assert book.take_level_changes() == []
    mkt(book, 7, 17, BUY, qty=5)
    assert book.take_level_changes() == [(SELL, 101, 0), (SELL, 103, 5)]
    book.cancel(3, 13, 0)
    book.amend(1, 11, 100, 2, 0)
    assert book.take_level_changes() == [(BUY, 99, 0), (BUY, 100, 5)]
    lim(book, 8, 18, BUY, 97, 1)
    book.cancel(8, 18, 0)                       # came and went: reported as gone
    book.amend(4, 14, 96, 1, 0)                 # moved: both levels
    assert book.take_level_changes() == [(BUY, 96, 1), (BUY, 97, 0), (BUY, 98, 0)]
    # Nothing changed: rejected, expired without a match, amend to the same quantity.
    lim(book, 9, 19, BUY, 0, 1)
    lim(book, 10, 19, BUY, 90, 1, tif=IOC)
    book.amend(2, 12, 100, 3, 0)
    book.cancel(99, 1, 0)
    assert book.take_level_changes() == []


def test_quote_stop_happens_at_the_partly_filled_maker(book):
    """A by-quote taker that leaves its maker partly filled has less quote than that
    level's price: the walk stops there, FIFO intact. It does not go on to the makers
    behind (a self-trade among them is not touched) nor to worse levels."""
    lim(book, 1, 11, SELL, 100, 9, ts=1)
    lim(book, 2, 13, SELL, 100, 5, ts=2)        # the taker's own, behind order 1
    assert mkt(book, 3, 13, BUY, quote=350, stp=E_MAKER, ts=3) == [
        Accepted(P, 3, 3, 3, 13, BUY, MARKET, IOC, 0, 0, 350),
        Trade(P, 4, 3, 1, 100, 3, BUY, 1, 11, 3, 13, 0, 0),
        Expired(P, 5, 3, 3, 13, 50, Reason.NO_LIQUIDITY),
    ]
    assert [o[:5] for o in book.orders()] == [(1, 11, SELL, 100, 6), (2, 13, SELL, 100, 5)]
    book.cancel(1, 11, 4)
    book.cancel(2, 13, 4)
    lim(book, 4, 11, BUY, 100, 5, ts=4)
    lim(book, 5, 11, BUY, 99, 5, ts=5)
    lim(book, 6, 11, BUY, 40, 5, ts=6)
    # 250: 2 lots at 100 leave 50; a lower bid (40) is never reached past the better one.
    assert mkt(book, 7, 14, SELL, quote=250, ts=7) == [
        Accepted(P, 11, 7, 7, 14, SELL, MARKET, IOC, 0, 0, 250),
        Trade(P, 12, 7, 2, 100, 2, SELL, 4, 11, 7, 14, 0, 0),
        Expired(P, 13, 7, 7, 14, 50, Reason.NO_LIQUIDITY),
    ]
