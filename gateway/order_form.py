"""A new-order request's parameters, checked and converted to engine integers.

Pure: Params in, a PlaceOrder body (or an ApiError with the Binance code) out. The
markets config does the decimal -> tick/lot conversion; the filters the engine would
apply anyway (tick, lot, min notional) are checked here too, so a bad order is refused
without a round trip.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.domain import STP, OrderKind, ResultCode, Side, TimeInForce
from engine.markets import Market, MarketsConfig
from gateway import errors
from gateway.params import Params

SIDES = {"BUY": Side.BUY, "SELL": Side.SELL}
TYPES = {"LIMIT": OrderKind.LIMIT, "MARKET": OrderKind.MARKET,
         "LIMIT_MAKER": OrderKind.LIMIT_MAKER}
TIFS = {"GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
STPS = {s.name: s for s in STP}
RESP_TYPES = ("ACK", "RESULT", "FULL")


@dataclass(frozen=True)
class NewOrder:
    market: Market
    side: int
    kind: int
    tif: int
    price: int
    qty: int
    quote_qty: int
    stp: int
    client_order_id: str | None
    resp_type: str

    def body(self, client_order_id: str) -> tuple[str, dict]:
        return ("keel.PlaceOrder", {
            "pair": self.market.pair, "side": self.side, "kind": self.kind, "tif": self.tif,
            "price": self.price, "qty": self.qty, "quote_qty": self.quote_qty, "stp": self.stp,
            "client_order_id": client_order_id})


_MIN_NOTIONAL: dict[str, tuple[Market, int]] = {}


def min_notional_units(market: Market) -> int:
    """Market.min_notional_units, computed once per market (a Decimal division per
    order otherwise); by pair, checked to be the same Market (hashing one is not cheap)."""
    found = _MIN_NOTIONAL.get(market.pair)
    if found is None or found[0] is not market:
        found = _MIN_NOTIONAL[market.pair] = (market, market.min_notional_units)
    return found[1]


def _steps(value: int | ResultCode) -> int:
    if isinstance(value, ResultCode):
        raise errors.from_result(value)
    return value


def parse_new_order(params: Params, markets: MarketsConfig) -> NewOrder:
    market = params.market(markets)
    side = SIDES[params.choice("side", SIDES, required=True, error=errors.invalid_side)]
    kind = TYPES[params.choice("type", TYPES, required=True, error=errors.invalid_order_type)]
    tif_name = params.choice("timeInForce", TIFS, error=errors.invalid_tif)
    stp = STPS[params.choice("selfTradePreventionMode", STPS, default="NONE")]
    resp = params.choice("newOrderRespType", RESP_TYPES, default="FULL")
    client_order_id = params.client_order_id()
    price_text = params.decimal("price")
    qty_text = params.decimal("quantity")
    quote_text = params.decimal("quoteOrderQty")

    price = qty = quote_qty = 0
    tif = TimeInForce.GTC
    if kind is OrderKind.MARKET:
        if price_text is not None:
            raise errors.param_not_required("price")
        if tif_name is not None:
            raise errors.param_not_required("timeInForce")
        if (qty_text is None) == (quote_text is None):
            raise errors.ApiError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, "
                                  "but not both.")
        if qty_text is not None:
            qty = _steps(market.qty_to_lots(qty_text))
        else:
            quote_qty = market.quote_to_units(quote_text)
            if isinstance(quote_qty, ResultCode) or quote_qty <= 0:
                raise errors.from_result(ResultCode.INVALID_QUANTITY)
            if quote_qty < min_notional_units(market):
                raise errors.from_result(ResultCode.BELOW_MIN_NOTIONAL)
    else:
        if price_text is None:
            raise errors.mandatory_missing("price")
        if qty_text is None:
            raise errors.mandatory_missing("quantity")
        if quote_text is not None:
            raise errors.param_not_required("quoteOrderQty")
        if kind is OrderKind.LIMIT:
            if tif_name is None:
                raise errors.mandatory_missing("timeInForce")
            tif = TIFS[tif_name]
        elif tif_name is not None and tif_name != "GTC":
            raise errors.invalid_tif()
        price = _steps(market.price_to_ticks(price_text))
        qty = _steps(market.qty_to_lots(qty_text))
        if price * qty < min_notional_units(market):
            raise errors.from_result(ResultCode.BELOW_MIN_NOTIONAL)
    if max(price, qty, quote_qty) >= 2 ** 62:
        raise errors.ApiError(-1013, "Filter failure: value too large.")
    return NewOrder(market, int(side), int(kind), int(tif), price, qty, quote_qty, int(stp),
                    client_order_id, resp)


def protection_price(order: NewOrder, bids: list[tuple[int, int]],
                     asks: list[tuple[int, int]]) -> NewOrder:
    """A MARKET buy by quantity (or sell by quote amount) needs a price bound for accounts
    to know the most it can spend (or sell); Binance clients send none. The bound is the
    worst level of the current book that the order would reach (the whole side when the
    book is too thin); with no opposite side at all there is nothing to trade against.
    `bids`/`asks` are the gateway's local book, best first."""
    if order.kind != OrderKind.MARKET or order.price:
        return order
    by_quote = order.quote_qty > 0
    if order.side == Side.BUY and not by_quote:
        levels, need, use_quote = asks, order.qty, False
    elif order.side == Side.SELL and by_quote:
        levels, need, use_quote = bids, order.quote_qty, True
    else:
        return order                      # bounded by its own amount already
    if not levels:
        raise errors.ApiError(-2010, "The order book has no liquidity for a market order.")
    bound = levels[-1][0]
    for price, lots in levels:
        need -= price * lots if use_quote else lots
        if need <= 0:
            bound = price
            break
    return NewOrder(order.market, order.side, order.kind, order.tif, bound, order.qty,
                    order.quote_qty, order.stp, order.client_order_id, order.resp_type)
