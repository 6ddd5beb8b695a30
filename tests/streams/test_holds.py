"""The gate's filters and hold bounds (pure)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.domain import OrderKind, ResultCode, Side, fee
from streams.holds import buy_fee_bound, check_place, hold_for
from tests.streams.sim import UNITS

AQ = UNITS.pairs["AAAQQQ"]          # min notional 50 units, maker 1000 / taker 2500 ppm
BUY, SELL = int(Side.BUY), int(Side.SELL)
LIMIT, MARKET, MAKER = int(OrderKind.LIMIT), int(OrderKind.MARKET), int(OrderKind.LIMIT_MAKER)


def test_filters_in_the_engine_order():
    assert check_place(AQ, 2, LIMIT, 0, 100, 1, 0, 0) == ResultCode.INVALID_REQUEST
    assert check_place(AQ, BUY, 7, 0, 100, 1, 0, 0) == ResultCode.INVALID_REQUEST
    assert check_place(AQ, BUY, LIMIT, 0, 0, 1, 0, 0) == ResultCode.INVALID_PRICE
    assert check_place(AQ, BUY, LIMIT, 0, 100, 0, 0, 0) == ResultCode.INVALID_QUANTITY
    assert check_place(AQ, BUY, LIMIT, 0, 100, 1, 5, 0) == ResultCode.INVALID_QUANTITY
    assert check_place(AQ, BUY, LIMIT, 0, 49, 1, 0, 0) == ResultCode.BELOW_MIN_NOTIONAL
    assert check_place(AQ, BUY, LIMIT, 0, 50, 1, 0, 0) == ResultCode.OK
    assert check_place(AQ, SELL, MAKER, 0, 25, 2, 0, 0) == ResultCode.OK
    assert check_place(AQ, BUY, MARKET, 0, -1, 1, 0, 0) == ResultCode.INVALID_PRICE
    assert check_place(AQ, BUY, MARKET, 0, 10, 1, 1, 0) == ResultCode.INVALID_QUANTITY
    assert check_place(AQ, BUY, MARKET, 0, 0, 0, 49, 0) == ResultCode.BELOW_MIN_NOTIONAL


def test_market_orders_the_gate_cannot_bound_need_a_protection_price():
    # buy by quantity, sell by quote amount: unbounded without a price
    assert check_place(AQ, BUY, MARKET, 0, 0, 3, 0, 0) == ResultCode.INVALID_PRICE
    assert check_place(AQ, SELL, MARKET, 0, 0, 0, 50, 0) == ResultCode.INVALID_PRICE
    assert check_place(AQ, BUY, MARKET, 0, 90, 3, 0, 0) == ResultCode.OK
    assert check_place(AQ, SELL, MARKET, 0, 90, 0, 50, 0) == ResultCode.OK
    # bounded by themselves: buy by quote amount, sell by quantity
    assert check_place(AQ, BUY, MARKET, 0, 0, 0, 50, 0) == ResultCode.OK
    assert check_place(AQ, SELL, MARKET, 0, 0, 3, 0, 0) == ResultCode.OK


def test_holds():
    rate = AQ.max_fee_ppm
    assert rate == 2500
    # limit buy 3 lots at 100: notional 300 + fee ceil(0.75)=1 + 2 rounding units
    assert hold_for(AQ, BUY, LIMIT, 100, 3, 0) == ("QQQ", (300 + 1 + 2) * 10)
    assert hold_for(AQ, BUY, MARKET, 100, 3, 0) == ("QQQ", (300 + 1 + 2) * 10)
    assert hold_for(AQ, BUY, MARKET, 0, 0, 400) == ("QQQ", (400 + fee(400, 1, rate)) * 10)
    assert hold_for(AQ, SELL, LIMIT, 100, 3, 0) == ("AAA", 300)
    assert hold_for(AQ, SELL, MARKET, 0, 3, 0) == ("AAA", 300)
    assert hold_for(AQ, SELL, MARKET, 30, 0, 100) == ("AAA", 3 * 100)


@given(price=st.integers(1, 10_000), qty=st.integers(1, 200), rate=st.integers(0, 999_999),
       data=st.data())
def test_buy_fee_bound_covers_any_split_into_fills_at_or_below_the_price(price, qty, rate, data):
    fills = data.draw(st.lists(st.integers(1, qty), min_size=1, max_size=qty))
    left, charged = qty, 0
    for q in fills:
        q = min(q, left)
        if not q:
            break
        charged += fee(data.draw(st.integers(1, price)), q, rate)
        left -= q
    assert charged <= buy_fee_bound(price, qty, rate)
