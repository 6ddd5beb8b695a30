"""Public market state per pair, folded from keel.events, keel.depth, keel.tickers and
keel.candles: recent trades, the local book, the latest 24h ticker and candles.
Integers only; gateway.render turns them into Binance JSON."""
from __future__ import annotations

from collections import OrderedDict, deque

from engine.domain import Trade
from gateway.book import LocalBook

RECENT_TRADES = 1000
CANDLES_KEPT = 1000
INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")


class MarketState:
    def __init__(self, pairs: list[str]) -> None:
        self.trades: dict[str, deque[Trade]] = {p: deque(maxlen=RECENT_TRADES) for p in pairs}
        self.books: dict[str, LocalBook] = {p: LocalBook(p) for p in pairs}
        self.tickers: dict[str, dict] = {}
        self.candles: dict[tuple[str, str], OrderedDict[int, dict]] = {}

    def apply_trade(self, ev: Trade) -> None:
        trades = self.trades.get(ev.pair)
        if trades is not None:
            trades.append(ev)

    def apply_depth(self, rec: dict) -> bool:
        book = self.books.get(rec["pair"])
        return book is not None and book.apply(rec)

    def apply_ticker(self, rec: dict) -> bool:
        old = self.tickers.get(rec["pair"])
        if old is not None and old["ts"] > rec["ts"]:
            return False
        self.tickers[rec["pair"]] = rec
        return True

    def apply_candle(self, rec: dict) -> None:
        series = self.candles.get((rec["pair"], rec["interval"]))
        if series is None:
            series = self.candles[(rec["pair"], rec["interval"])] = OrderedDict()
        series[rec["open_time"]] = rec
        if len(series) > CANDLES_KEPT:
            series.popitem(last=False)

    def klines(self, pair: str, interval: str, start: int | None, end: int | None,
               limit: int) -> list[dict]:
        series = self.candles.get((pair, interval)) or {}
        rows = [c for t, c in sorted(series.items())
                if (start is None or t >= start) and (end is None or t <= end)]
        return rows[:limit] if start is not None else rows[-limit:]
