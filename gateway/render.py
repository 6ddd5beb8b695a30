"""Binance JSON shapes from Keel's integers: the only place ticks, lots and notional
units become decimal strings (fixed places from the markets config's tick and lot)."""
from __future__ import annotations

from engine.domain import OrderKind, Side, TimeInForce
from engine.markets import Market, MarketsConfig

SIDES = {int(Side.BUY): "BUY", int(Side.SELL): "SELL"}
KINDS = {int(OrderKind.LIMIT): "LIMIT", int(OrderKind.MARKET): "MARKET",
         int(OrderKind.LIMIT_MAKER): "LIMIT_MAKER"}
TIFS = {int(TimeInForce.GTC): "GTC", int(TimeInForce.IOC): "IOC", int(TimeInForce.FOK): "FOK"}
STPS = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH")


def places(step) -> int:
    return max(0, -step.normalize().as_tuple().exponent)


def fixed(units: int, decimals: int) -> str:
    """`units` of 10**-decimals as a decimal string, exactly (no float, no Decimal)."""
    if decimals == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10 ** decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


class Units:
    """One market's integer -> string conversions."""

    __slots__ = ("market", "price_places", "qty_places", "quote_places", "pair")

    def __init__(self, market: Market) -> None:
        self.market = market
        self.pair = market.pair
        self.price_places = places(market.tick_size)
        self.qty_places = places(market.lot_size)
        self.quote_places = places(market.unit_value)

    def price(self, ticks: int | None) -> str:
        return fixed(ticks or 0, self.price_places)

    def qty(self, lots: int | None) -> str:
        return fixed(lots or 0, self.qty_places)

    def quote(self, units: int | None) -> str:
        return fixed(units or 0, self.quote_places)


def build_units(markets: MarketsConfig) -> dict[str, Units]:
    return {pair: Units(m) for pair, m in markets.markets.items()}


def levels(u: Units, rows) -> list[list[str]]:
    return [[u.price(p), u.qty(q)] for p, q in rows]


def order(u: Units, o) -> dict:
    return {
        "symbol": o.pair, "orderId": o.order_id, "orderListId": -1,
        "clientOrderId": o.client_order_id, "price": u.price(o.price),
        "origQty": u.qty(o.qty), "executedQty": u.qty(o.executed),
        "cummulativeQuoteQty": u.quote(o.cum_quote), "status": o.status,
        "timeInForce": TIFS.get(o.tif, "GTC"), "type": KINDS.get(o.kind, "LIMIT"),
        "side": SIDES.get(o.side, "BUY"), "stopPrice": u.price(0), "icebergQty": u.qty(0),
        "time": o.time, "updateTime": o.update_time,
        "isWorking": o.status in ("NEW", "PARTIALLY_FILLED"), "workingTime": o.time,
        "origQuoteOrderQty": u.quote(o.quote_qty),
        "selfTradePreventionMode": STPS[o.stp] if 0 <= o.stp < 4 else "NONE",
    }


def order_ack(o) -> dict:
    return {"symbol": o.pair, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": o.client_order_id, "transactTime": o.time}


def order_result(u: Units, o, full: bool) -> dict:
    out = order_ack(o) | {
        "price": u.price(o.price), "origQty": u.qty(o.qty), "executedQty": u.qty(o.executed),
        "origQuoteOrderQty": u.quote(o.quote_qty),
        "cummulativeQuoteQty": u.quote(o.cum_quote), "status": o.status,
        "timeInForce": TIFS.get(o.tif, "GTC"), "type": KINDS.get(o.kind, "LIMIT"),
        "side": SIDES.get(o.side, "BUY"), "workingTime": o.time,
        "selfTradePreventionMode": STPS[o.stp] if 0 <= o.stp < 4 else "NONE",
    }
    if full:
        out["fills"] = [{"price": u.price(f.price), "qty": u.qty(f.qty),
                         "commission": u.quote(f.fee), "commissionAsset": u.market.quote,
                         "tradeId": f.trade_id} for f in o.fills]
    return out


def public_trade(u: Units, t) -> dict:
    return {"id": t.trade_id, "price": u.price(t.price), "qty": u.qty(t.qty),
            "quoteQty": u.quote(t.price * t.qty), "time": t.ts,
            "isBuyerMaker": t.taker_side == int(Side.SELL), "isBestMatch": True}


def agg_trade(u: Units, t) -> dict:
    # Every engine trade is its own aggregate: fills of one taker at one price stay
    # separate records, so first and last trade ids coincide.
    return {"a": t.trade_id, "p": u.price(t.price), "q": u.qty(t.qty), "f": t.trade_id,
            "l": t.trade_id, "T": t.ts, "m": t.taker_side == int(Side.SELL), "M": True}


def my_trade(u: Units, t) -> dict:
    return {"symbol": t.pair, "id": t.trade_id, "orderId": t.order_id, "orderListId": -1,
            "price": u.price(t.price), "qty": u.qty(t.qty), "quoteQty": u.quote(t.price * t.qty),
            "commission": u.quote(t.fee), "commissionAsset": u.market.quote, "time": t.ts,
            "isBuyer": t.is_buyer, "isMaker": t.is_maker, "isBestMatch": True}


def kline_row(u: Units, c: dict) -> list:
    return [c["open_time"], u.price(c["open"]), u.price(c["high"]), u.price(c["low"]),
            u.price(c["close"]), u.qty(c["base_volume"]), c["close_time"] - 1,
            u.quote(c["quote_volume"]), c["trade_count"], "0", "0", "0"]


def ticker_24h(u: Units, t: dict | None, book_best, now_ms: int) -> dict:
    t = t or {}
    bid, ask = book_best
    volume, quote_volume = t.get("base_volume", 0), t.get("quote_volume", 0)
    # weighted average price = quote volume / base volume, in ticks (floor)
    wavg = quote_volume // volume if volume else 0
    bp = t.get("price_change_bp", 0)
    return {
        "symbol": u.pair, "priceChange": u.price(t.get("price_change", 0)),
        "priceChangePercent": fixed(bp, 2), "weightedAvgPrice": u.price(wavg),
        "prevClosePrice": u.price(t.get("open_price")), "lastPrice": u.price(t.get("last_price")),
        "lastQty": u.qty(t.get("last_qty")),
        "bidPrice": u.price(bid[0] if bid else 0), "bidQty": u.qty(bid[1] if bid else 0),
        "askPrice": u.price(ask[0] if ask else 0), "askQty": u.qty(ask[1] if ask else 0),
        "openPrice": u.price(t.get("open_price")), "highPrice": u.price(t.get("high_price")),
        "lowPrice": u.price(t.get("low_price")), "volume": u.qty(volume),
        "quoteVolume": u.quote(quote_volume), "openTime": t.get("open_time", now_ms - 86_400_000),
        "closeTime": t.get("ts", now_ms), "firstId": t.get("first_trade_id") or -1,
        "lastId": t.get("last_trade_id") or -1, "count": t.get("trade_count", 0),
    }


def book_ticker(u: Units, book_best) -> dict:
    bid, ask = book_best
    return {"symbol": u.pair, "bidPrice": u.price(bid[0] if bid else 0),
            "bidQty": u.qty(bid[1] if bid else 0), "askPrice": u.price(ask[0] if ask else 0),
            "askQty": u.qty(ask[1] if ask else 0)}


def exchange_info(markets: MarketsConfig, units: dict[str, Units], now_ms: int,
                  ip_limit: int) -> dict:
    symbols = []
    for pair, m in sorted(markets.markets.items()):
        u = units[pair]
        symbols.append({
            "symbol": pair, "status": "TRADING" if m.trading else "HALT",
            "baseAsset": m.base, "baseAssetPrecision": markets.assets[m.base].decimals,
            "quoteAsset": m.quote, "quotePrecision": markets.assets[m.quote].decimals,
            "quoteAssetPrecision": markets.assets[m.quote].decimals,
            "baseCommissionPrecision": markets.assets[m.base].decimals,
            "quoteCommissionPrecision": markets.assets[m.quote].decimals,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
            "cancelReplaceAllowed": False, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": u.price(1),
                 "maxPrice": u.price(10 ** 15), "tickSize": u.price(1)},
                {"filterType": "LOT_SIZE", "minQty": u.qty(1), "maxQty": u.qty(10 ** 15),
                 "stepSize": u.qty(1)},
                {"filterType": "NOTIONAL", "minNotional": u.quote(m.min_notional_units),
                 "applyMinToMarket": True, "maxNotional": u.quote(10 ** 18),
                 "applyMaxToMarket": False, "avgPriceMins": 0},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": list(STPS),
        })
    return {"timezone": "UTC", "serverTime": now_ms,
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                            "intervalNum": 1, "limit": ip_limit}],
            "exchangeFilters": [{"filterType": "EXCHANGE_MAX_NUM_ORDERS",
                                 "maxNumOrders": markets.max_open_orders}],
            "symbols": symbols}
