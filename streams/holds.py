"""What a new order may consume, decided before it reaches the engine (pure).

The hold is an upper bound on everything the order can take from its owner, in the
smallest units of one asset. Settlement later debits trades from it and releases the
rest, so a hold that is too small would let a balance go negative; every bound below is
therefore a worst case, never an estimate.
"""
from __future__ import annotations

from engine.domain import OrderKind, ResultCode, Side, fee
from streams.units import PairUnits

_SIDES = {0, 1}
_KINDS = {0, 1, 2}
_TIFS = {0, 1, 2}
_STPS = {0, 1, 2, 3}
# Enum members read once: on Python 3.11 each `ResultCode.OK` or `Side.SELL` in a function
# is a descriptor call (~160 ns, timeit), and every new order reads several.
_OK = ResultCode.OK
_MARKET, _BUY, _SELL = OrderKind.MARKET, Side.BUY, Side.SELL


def check_place(pu: PairUnits, side: int, kind: int, tif: int, price: int, qty: int,
                quote_qty: int, stp: int) -> ResultCode:
    """The engine's filters (domain.py steps 3-5) plus the gate's own: OK or the first failure.

    Checked here so a malformed order never holds funds; the engine checks again.
    """
    if side not in _SIDES or kind not in _KINDS or tif not in _TIFS or stp not in _STPS:
        return ResultCode.INVALID_REQUEST
    if kind == _MARKET:
        if price < 0:
            return ResultCode.INVALID_PRICE
        if not ((qty > 0 and quote_qty == 0) or (quote_qty > 0 and qty == 0)):
            return ResultCode.INVALID_QUANTITY
        if quote_qty and quote_qty < pu.min_notional:
            return ResultCode.BELOW_MIN_NOTIONAL
        # Without a protection price the gate cannot bound what a market buy by quantity
        # spends, nor what a market sell by quote amount sells.
        by_quote = quote_qty > 0
        if price == 0 and ((side == _BUY and not by_quote) or (side == _SELL and by_quote)):
            return ResultCode.INVALID_PRICE
        return _OK
    if price <= 0:
        return ResultCode.INVALID_PRICE
    if qty <= 0 or quote_qty != 0:
        return ResultCode.INVALID_QUANTITY
    if price * qty < pu.min_notional:
        return ResultCode.BELOW_MIN_NOTIONAL
    return _OK


def buy_fee_bound(price: int, qty: int, rate_ppm: int) -> int:
    """Most fee, in notional units, that `qty` lots bought at <= `price` can be charged.

    The engine rounds each fill's fee up, so n fills can cost up to n - 1 units more
    than one fee on the whole; an order has at most `qty` fills (each >= 1 lot).
    """
    if not rate_ppm:
        return 0
    return fee(price, qty, rate_ppm) + qty - 1


def hold_for(pu: PairUnits, side: int, kind: int, price: int, qty: int,
             quote_qty: int) -> tuple[str, int]:
    """(asset, amount in its smallest units) to hold for a valid order (check_place OK)."""
    if side == _SELL:
        if kind == _MARKET and quote_qty:
            # Sold at >= the protection price, so at most quote_qty // price lots go.
            return pu.base, pu.lots(quote_qty // price)
        return pu.base, pu.lots(qty)
    if kind == _MARKET and quote_qty:
        # The engine spends at most quote_qty; the fee on top is bounded by one fee on
        # the whole, and settlement caps any rounding excess at what is held.
        return pu.quote, pu.notional(quote_qty + fee(quote_qty, 1, pu.max_fee_ppm))
    return pu.quote, pu.notional(price * qty + buy_fee_bound(price, qty, pu.max_fee_ppm))
