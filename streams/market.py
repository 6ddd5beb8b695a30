"""Market data rules: rolling 24 h tickers and 1-minute candles from engine events (pure).

Time is the events' own `ts` (never the wall clock), so a replay gives the same output.
One `PairStats` per pair folds that pair's events in seq order:

- the 24 h window keeps the trades with ts > now - 24 h (now = ts of the last event
  applied); open = first trade in the window, last = last one, high/low over it;
- best bid/ask come from a small book rebuilt from the events: a LIMIT GTC or LIMIT_MAKER
  order rests with what its trades left, until Done, Cancelled or Expired;
- a candle covers [open_time, open_time + 60 s); it is republished after every trade and
  closed (closed = true) by the first trade of a later minute.

State dumps to plain lists (`dump`/`load`) so a worker can checkpoint it in a table.

A ticker follows every trade, so what it reads is kept up to date as events arrive
instead of being recomputed from the whole window: the 24 h high and low are the heads of
two monotonic deques over the window's trades, and the best bid and ask come from the
resting quantity per price (`levels`). Rescanning the window's prices and every resting
order for each trade cost O(trades in 24 h) a trade: the market data worker drained
~1,050 events/s (README, bench/streams.py), 272 us of rules per event in-process over the
bench's 40,000 events. Both are rebuilt from the checkpoint on `load` (its format is
unchanged).
"""
from __future__ import annotations

from collections import deque

from engine.domain import Accepted, Amended, Cancelled, Done, Expired, OrderKind, Trade

DAY_MS = 86_400_000
MINUTE_MS = 60_000
_RESTING_KINDS = (int(OrderKind.LIMIT), int(OrderKind.LIMIT_MAKER))


def _bp(change: int, base: int) -> int:
    """change / base in basis points, truncated toward zero, in integers only."""
    if not base:
        return 0
    bp = abs(change) * 10_000 // base
    return -bp if change < 0 else bp


class PairStats:
    def __init__(self, pair: str) -> None:
        self.pair = pair
        self.seq = 0
        self.ts = 0
        self.window: deque = deque()          # [ts, price, qty, trade_id]
        self.base_volume = 0
        self.quote_volume = 0
        self.orders: dict[int, list] = {}     # order_id -> [side, price, remaining]
        self.candle: list | None = None       # [open_time, o, h, l, c, base, quote, count]
        # derived, rebuilt by `load`: price -> resting quantity (> 0) per side, and the
        # window's trades whose price no later trade reaches (highs) or undercuts (lows)
        self.levels: tuple[dict, dict] = ({}, {})
        self.highs: deque = deque()
        self.lows: deque = deque()

    # ---- events ----

    def apply(self, event) -> tuple[dict | None, list[dict]]:
        """(ticker or None, candles) to publish after `event`; nothing for a seen seq."""
        if event.seq <= self.seq:
            return None, []
        self.seq, self.ts = event.seq, max(self.ts, event.ts)
        if isinstance(event, Accepted):
            if event.kind in _RESTING_KINDS and event.tif == 0:
                self._rest(event.order_id, [event.side, event.price, event.qty])
            return None, []
        if isinstance(event, Done | Cancelled | Expired):
            self._rest(event.order_id, None)
            return None, []
        if isinstance(event, Amended):
            order = self.orders.get(event.order_id)
            if order is not None:
                self._rest(event.order_id, [order[0], event.price, event.qty])
            return None, []
        if not isinstance(event, Trade):
            return None, []
        for oid in (event.maker_order_id, event.taker_order_id):
            order = self.orders.get(oid)
            if order is not None:
                self._rest(oid, [order[0], order[1], order[2] - event.qty])
        trade = [event.ts, event.price, event.qty, event.trade_id]
        self.window.append(trade)
        self._extremes(trade)
        self.base_volume += event.qty
        self.quote_volume += event.price * event.qty
        self._expire()
        return self.ticker(), self._candle(event)

    def _rest(self, order_id: int, order: list | None) -> None:
        """Set (None: drop) a resting order, keeping `levels` in step: a price level holds
        the sum of its orders' positive remainders."""
        old = self.orders.pop(order_id, None)
        if old is not None and old[2] > 0:
            level = self.levels[old[0]]
            left = level[old[1]] - old[2]
            if left > 0:
                level[old[1]] = left
            else:
                del level[old[1]]
        if order is None:
            return
        self.orders[order_id] = order
        if order[2] > 0:
            level = self.levels[order[0]]
            level[order[1]] = level.get(order[1], 0) + order[2]

    def _extremes(self, trade: list) -> None:
        price = trade[1]
        highs, lows = self.highs, self.lows
        while highs and highs[-1][1] <= price:
            highs.pop()
        highs.append(trade)
        while lows and lows[-1][1] >= price:
            lows.pop()
        lows.append(trade)

    def _expire(self) -> None:
        start = self.ts - DAY_MS
        window, highs, lows = self.window, self.highs, self.lows
        while window and window[0][0] <= start:
            trade = window.popleft()
            if highs and highs[0] is trade:
                highs.popleft()
            if lows and lows[0] is trade:
                lows.popleft()
            self.base_volume -= trade[2]
            self.quote_volume -= trade[1] * trade[2]

    def _candle(self, t: Trade) -> list[dict]:
        out = []
        open_time = t.ts - t.ts % MINUTE_MS
        c = self.candle
        if c is not None and open_time > c[0]:
            out.append(self._candle_record(c, closed=True))
            c = None
        if c is None or open_time < c[0]:
            # (a trade older than the open candle cannot happen: ts never goes back in a
            # pair's log; if it did, it starts its own candle rather than corrupt this one)
            c = [open_time, t.price, t.price, t.price, t.price, 0, 0, 0]
        c[2], c[3], c[4] = max(c[2], t.price), min(c[3], t.price), t.price
        c[5] += t.qty
        c[6] += t.price * t.qty
        c[7] += 1
        self.candle = c
        out.append(self._candle_record(c, closed=False))
        return out

    def _candle_record(self, c: list, closed: bool) -> dict:
        return {"pair": self.pair, "interval": "1m", "open_time": c[0],
                "close_time": c[0] + MINUTE_MS, "open": c[1], "high": c[2], "low": c[3],
                "close": c[4], "base_volume": c[5], "quote_volume": c[6], "trade_count": c[7],
                "closed": closed}

    # ---- views ----

    def best(self, side: int) -> tuple[int | None, int | None]:
        levels = self.levels[side]
        if not levels:
            return None, None
        price = max(levels) if side == 0 else min(levels)
        return price, levels[price]

    def ticker(self) -> dict:
        w = self.window
        bid, bid_qty = self.best(0)
        ask, ask_qty = self.best(1)
        out = {"pair": self.pair, "ts": self.ts, "window_ms": DAY_MS,
               "open_time": self.ts - DAY_MS, "best_bid_price": bid, "best_bid_qty": bid_qty,
               "best_ask_price": ask, "best_ask_qty": ask_qty,
               "base_volume": self.base_volume, "quote_volume": self.quote_volume,
               "trade_count": len(w)}
        if not w:
            return out | {"last_price": None, "last_qty": None, "open_price": None,
                          "high_price": None, "low_price": None, "price_change": 0,
                          "price_change_bp": 0, "first_trade_id": None, "last_trade_id": None}
        first, last = w[0], w[-1]
        change = last[1] - first[1]
        return out | {"last_price": last[1], "last_qty": last[2], "open_price": first[1],
                      "high_price": self.highs[0][1], "low_price": self.lows[0][1],
                      "price_change": change,
                      "price_change_bp": _bp(change, first[1]),
                      "first_trade_id": first[3], "last_trade_id": last[3]}

    # ---- checkpoint ----

    def dump(self) -> list:
        return [self.seq, self.ts, list(self.window), self.base_volume, self.quote_volume,
                [[k, *v] for k, v in self.orders.items()], self.candle]

    @classmethod
    def load(cls, pair: str, data: list) -> PairStats:
        s = cls(pair)
        s.seq, s.ts, window, s.base_volume, s.quote_volume, orders, s.candle = data
        s.window = deque()
        for trade in window:
            s.window.append(trade)
            s._extremes(trade)
        for o in orders:
            s._rest(o[0], o[1:])
        return s
