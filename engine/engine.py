"""The engine: one order book per pair, routed by the command's pair, snapshotted whole.

Which book implementation runs is a choice made once: "c" is the compiled core
(engine._cbook), "python" the pure one (engine.book); "auto" takes the compiled core when
it was built and falls back silently otherwise. Both give the same events and bytes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from engine import snapshot
from engine.markets import Market, MarketsConfig
from engine.snapshot import SnapshotError

IMPLS = ("auto", "python", "c")


def book_class(impl: str = "auto") -> type:
    """The OrderBook class for `impl`; "c" raises ImportError if the core was not built."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, not {impl!r}")
    if impl in ("auto", "c"):
        try:
            from engine._cbook import OrderBook
            return OrderBook
        except ImportError:
            if impl == "c":
                raise
    from engine.book import OrderBook
    return OrderBook


def _market_list(markets: MarketsConfig | Iterable[Market]) -> list[Market]:
    if isinstance(markets, MarketsConfig):
        return list(markets.markets.values())
    return list(markets)


class Engine:
    def __init__(self, markets: MarketsConfig | Iterable[Market], impl: str = "auto") -> None:
        self._book_class = book_class(impl)
        self._markets = {m.pair: m for m in _market_list(markets)}
        self._books = {pair: self._new_book(m) for pair, m in self._markets.items()}

    def _new_book(self, m: Market):
        return self._book_class(m.pair, m.min_notional_units, m.maker_fee_ppm,
                                m.taker_fee_ppm, m.trading)

    @property
    def impl(self) -> str:
        """"c" or "python": what actually runs."""
        return "python" if self._book_class.__module__ == "engine.book" else "c"

    def pairs(self) -> list[str]:
        return sorted(self._books)

    def has_pair(self, pair: str) -> bool:
        return pair in self._books

    def book(self, pair: str):
        return self._books[pair]

    def apply(self, cmd) -> list:
        # An unknown pair is the caller's to dead-letter (it checks has_pair first).
        book = self._books.get(cmd.pair)
        return book.apply(cmd) if book is not None else []

    def apply_many(self, cmds: Iterable) -> list:
        out: list = []
        books = self._books
        for cmd in cmds:
            book = books.get(cmd.pair)
            if book is not None:
                out += book.apply(cmd)
        return out

    def snapshot(self) -> bytes:
        return snapshot.encode(self._books)

    def state_hash(self) -> str:
        return hashlib.sha256(self.snapshot()).hexdigest()

    @classmethod
    def restore(cls, markets: MarketsConfig | Iterable[Market], data: bytes,
                impl: str = "auto") -> Engine:
        """The engine saved in `data`; a market configured since then starts empty."""
        engine = cls(markets, impl)
        for pair, section in snapshot.decode(data).items():
            market = engine._markets.get(pair)
            if market is None:
                raise SnapshotError(f"snapshot has a book for {pair!r}, not in the markets config")
            try:
                engine._books[pair] = engine._book_class.restore(
                    section, market.min_notional_units, market.maker_fee_ppm,
                    market.taker_fee_ppm)
            except SnapshotError:
                raise
            except ValueError as exc:
                raise SnapshotError(f"{pair}: {exc}") from exc
        return engine
