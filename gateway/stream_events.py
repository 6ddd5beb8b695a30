"""WebSocket payloads, Binance-style, built from engine events and market records."""
from __future__ import annotations

from engine.domain import Side
from gateway.render import KINDS, SIDES, STPS, TIFS, Units

EXEC_TYPE = {"Accepted": "NEW", "Trade": "TRADE", "Done": "TRADE", "Cancelled": "CANCELED",
             "Expired": "EXPIRED", "Rejected": "REJECTED", "Amended": "REPLACED"}


def trade(u: Units, t) -> dict:
    buyer, seller = ((t.taker_order_id, t.maker_order_id) if t.taker_side == int(Side.BUY)
                     else (t.maker_order_id, t.taker_order_id))
    return {"e": "trade", "E": t.ts, "s": t.pair, "t": t.trade_id, "p": u.price(t.price),
            "q": u.qty(t.qty), "b": buyer, "a": seller, "T": t.ts,
            "m": t.taker_side == int(Side.SELL), "M": True}


def depth_diff(u: Units, rec: dict) -> dict:
    return {"e": "depthUpdate", "E": rec["ts"], "s": rec["pair"],
            "U": rec["first_update_id"], "u": rec["last_update_id"],
            "b": [[u.price(lv["price"]), u.qty(lv["qty"])] for lv in rec["bids"]],
            "a": [[u.price(lv["price"]), u.qty(lv["qty"])] for lv in rec["asks"]]}


def ticker(u: Units, t: dict) -> dict:
    volume, quote_volume = t["base_volume"], t["quote_volume"]
    return {"e": "24hrTicker", "E": t["ts"], "s": t["pair"],
            "p": u.price(t["price_change"]), "P": f"{t['price_change_bp'] / 100:.2f}",
            "w": u.price(quote_volume // volume if volume else 0),
            "x": u.price(t.get("open_price")), "c": u.price(t.get("last_price")),
            "Q": u.qty(t.get("last_qty")), "b": u.price(t.get("best_bid_price")),
            "B": u.qty(t.get("best_bid_qty")), "a": u.price(t.get("best_ask_price")),
            "A": u.qty(t.get("best_ask_qty")), "o": u.price(t.get("open_price")),
            "h": u.price(t.get("high_price")), "l": u.price(t.get("low_price")),
            "v": u.qty(volume), "q": u.quote(quote_volume), "O": t["open_time"], "C": t["ts"],
            "F": t.get("first_trade_id") or -1, "L": t.get("last_trade_id") or -1,
            "n": t["trade_count"]}


def mini_ticker(u: Units, t: dict) -> dict:
    return {"e": "24hrMiniTicker", "E": t["ts"], "s": t["pair"],
            "c": u.price(t.get("last_price")), "o": u.price(t.get("open_price")),
            "h": u.price(t.get("high_price")), "l": u.price(t.get("low_price")),
            "v": u.qty(t["base_volume"]), "q": u.quote(t["quote_volume"])}


def kline(u: Units, c: dict) -> dict:
    return {"e": "kline", "E": c["close_time"], "s": c["pair"], "k": {
        "t": c["open_time"], "T": c["close_time"] - 1, "s": c["pair"], "i": c["interval"],
        "f": -1, "L": -1, "o": u.price(c["open"]), "c": u.price(c["close"]),
        "h": u.price(c["high"]), "l": u.price(c["low"]), "v": u.qty(c["base_volume"]),
        "n": c["trade_count"], "x": c["closed"], "q": u.quote(c["quote_volume"]),
        "V": "0", "Q": "0", "B": "0"}}


def execution_report(u: Units, o, ev) -> dict:
    """executionReport for one change of the user's order `o` caused by engine event `ev`."""
    name = type(ev).__name__
    last_qty = last_price = last_fee = 0
    trade_id, is_maker = -1, False
    if name == "Trade":
        last_qty, last_price, trade_id = ev.qty, ev.price, ev.trade_id
        is_maker = ev.maker_order_id == o.order_id and ev.maker_user_id == o.user_id
        last_fee = ev.maker_fee if is_maker else ev.taker_fee
    return {"e": "executionReport", "E": ev.ts, "s": o.pair, "c": o.client_order_id,
            "S": SIDES.get(o.side, "BUY"), "o": KINDS.get(o.kind, "LIMIT"),
            "f": TIFS.get(o.tif, "GTC"), "q": u.qty(o.qty), "p": u.price(o.price),
            "P": u.price(0), "F": u.qty(0), "g": -1, "C": "",
            "x": EXEC_TYPE.get(name, "NEW"), "X": o.status,
            "r": "NONE" if name != "Rejected" else str(ev.code),
            "i": o.order_id, "l": u.qty(last_qty), "z": u.qty(o.executed),
            "L": u.price(last_price), "n": u.quote(last_fee), "N": u.market.quote,
            "T": ev.ts, "t": trade_id, "v": 0, "I": ev.seq, "w": o.status in ("NEW", "PARTIALLY_FILLED"),
            "m": is_maker, "M": False, "O": o.time, "Z": u.quote(o.cum_quote),
            "Y": u.quote(last_price * last_qty), "Q": u.quote(o.quote_qty),
            "W": o.time, "V": STPS[o.stp] if 0 <= o.stp < 4 else "NONE"}


def account_position(user_id: int, asset: str, free: str, locked: str, ts: int) -> dict:
    return {"e": "outboundAccountPosition", "E": ts, "u": ts,
            "B": [{"a": asset, "f": free, "l": locked}]}
