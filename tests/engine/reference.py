"""A slow, obviously-correct reference order book, written from engine/domain.py alone.

It exists so the fast books (engine.book, engine._cbook) can be fed the same commands
and compared event for event and snapshot byte for byte. It is written for the reader,
not for speed: each side is a plain dict {price: [orders, oldest first]}; the best
price is recomputed with max()/min() and a walk sorts the price keys every time, so
there is no cached best price, no heap and no linked list that could drift out of date.
A dict of order lists (not one flat list sorted per command) keeps the standard
100,000-op workload check to seconds rather than minutes; it is the only concession.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

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

BUY, SELL = int(Side.BUY), int(Side.SELL)
_ORDER_RECORD = struct.Struct("<qqBqqB")


@dataclass(eq=False)     # identity, so list.remove() removes exactly this order
class _Resting:
    order_id: int
    user_id: int
    side: int
    price: int
    remaining: int
    stp: int


class ReferenceBook:
    def __init__(self, pair: str, min_notional: int = 0, maker_fee_ppm: int = 0,
                 taker_fee_ppm: int = 0, trading: bool = True) -> None:
        self.pair = pair
        self.min_notional = min_notional
        self.maker_fee_ppm = maker_fee_ppm
        self.taker_fee_ppm = taker_fee_ppm
        self.trading = bool(trading)
        self.seq = 0
        self.last_trade_id = 0
        self._resting: dict[int, _Resting] = {}                 # by order id
        self._levels: dict[int, dict[int, list[_Resting]]] = {BUY: {}, SELL: {}}
        self._events: list = []
        self._ts = 0

    # ---- event emission: every event takes the next seq ----
    def _emit(self, cls, *fields) -> None:
        self.seq += 1
        self._events.append(cls(self.pair, self.seq, self._ts, *fields))

    def _begin(self, ts: int) -> None:
        self._events = []
        self._ts = ts

    def _end(self) -> list:
        events, self._events = self._events, []
        return events

    # ---- the book, recomputed ----
    def _side_in_priority(self, side: int) -> list[_Resting]:
        """All resting orders of one side, best first: price, then arrival (a copy)."""
        levels = self._levels[side]
        prices = sorted(levels, reverse=(side == BUY))
        return [o for p in prices for o in levels[p]]

    def _walk(self, side: int):
        """Yield one side's orders best first, lazily; the caller may remove the order
        it was just given (each level is copied before it is walked)."""
        levels = self._levels[side]
        for price in sorted(levels, reverse=(side == BUY)):
            yield from list(levels.get(price, ()))

    def best_bid(self) -> int | None:
        return max(self._levels[BUY], default=None)

    def best_ask(self) -> int | None:
        return min(self._levels[SELL], default=None)

    def _would_cross(self, side: int, price: int) -> bool:
        if side == BUY:
            ask = self.best_ask()
            return ask is not None and price >= ask
        bid = self.best_bid()
        return bid is not None and price <= bid

    def _rest(self, order: _Resting) -> None:
        """Put the order at the back of its price level."""
        self._resting[order.order_id] = order
        self._levels[order.side].setdefault(order.price, []).append(order)

    def _remove(self, order: _Resting) -> None:
        del self._resting[order.order_id]
        level = self._levels[order.side][order.price]
        level.remove(order)
        if not level:
            del self._levels[order.side][order.price]

    # ---- commands ----
    def place(self, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts):
        # Events carry plain ints even when a caller passes IntEnum members (BOOK_API).
        order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts = map(
            int, (order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts))
        if side not in (BUY, SELL) or kind not in set(OrderKind) or tif not in set(TimeInForce) \
                or stp not in set(STP):
            # domain.py gives no outcome for values outside the enums; the reference
            # refuses to guess rather than define one.
            raise ValueError(f"side/kind/tif/stp out of range: {side}/{kind}/{tif}/{stp}")
        self._begin(ts)
        code = self._validate_place(order_id, user_id, side, kind, tif, price, qty, quote_qty, stp)
        if code is not None:
            self._emit(Rejected, order_id, user_id, int(code))
            return self._end()
        self._emit(Accepted, order_id, user_id, side, kind, tif, price, qty, quote_qty)
        self._match(order_id, user_id, side, kind, tif, price, qty, quote_qty, stp)
        return self._end()

    def _acceptable(self, side: int, kind: int, limit: int, level: int) -> bool:
        if kind == OrderKind.MARKET and limit == 0:
            return True
        return level <= limit if side == BUY else level >= limit

    def _validate_place(self, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp):
        is_market = kind == OrderKind.MARKET
        if not self.trading:
            return ResultCode.MARKET_CLOSED
        if order_id in self._resting:
            return ResultCode.DUPLICATE_ORDER_ID
        if (price < 0) if is_market else (price <= 0):
            return ResultCode.INVALID_PRICE
        if is_market:
            by_qty = qty > 0 and quote_qty == 0
            by_quote = quote_qty > 0 and qty == 0
            if not (by_qty or by_quote):
                return ResultCode.INVALID_QUANTITY
            if by_quote and quote_qty < self.min_notional:
                return ResultCode.BELOW_MIN_NOTIONAL
            return None
        if qty <= 0 or quote_qty != 0:
            return ResultCode.INVALID_QUANTITY
        if price * qty < self.min_notional:
            return ResultCode.BELOW_MIN_NOTIONAL
        if kind == OrderKind.LIMIT_MAKER and self._would_cross(side, price):
            return ResultCode.POST_ONLY_WOULD_CROSS
        if kind == OrderKind.LIMIT and tif == TimeInForce.FOK:
            if self._fillable(user_id, side, price, stp) < qty:
                return ResultCode.FOK_NOT_FILLABLE
        return None

    def _fillable(self, user_id, side, price, stp) -> int:
        """Lots a LIMIT taker could take right now, without touching the book."""
        total = 0
        for maker in self._walk(SELL if side == BUY else BUY):
            if not self._acceptable(side, OrderKind.LIMIT, price, maker.price):
                break
            if maker.user_id == user_id and stp != STP.NONE:
                if stp in (STP.EXPIRE_TAKER, STP.EXPIRE_BOTH):
                    break
                continue  # EXPIRE_MAKER: this maker would vanish, not trade
            total += maker.remaining
        return total

    def _match(self, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp):
        by_quote = kind == OrderKind.MARKET and quote_qty > 0
        left = quote_qty if by_quote else qty      # lots, or quote units for by-quote
        opposite = SELL if side == BUY else BUY
        while left > 0:
            # Re-read the front of the opposite side every time: a maker that was only
            # partly filled is still first, and removals change who is first.
            maker = next(self._walk(opposite), None)
            if maker is None or not self._acceptable(side, kind, price, maker.price):
                break
            if maker.user_id == user_id and stp != STP.NONE:
                if stp in (STP.EXPIRE_MAKER, STP.EXPIRE_BOTH):
                    self._emit(Expired, maker.order_id, maker.user_id, maker.remaining,
                               int(Reason.SELF_TRADE))
                    self._remove(maker)
                if stp in (STP.EXPIRE_TAKER, STP.EXPIRE_BOTH):
                    self._emit(Expired, order_id, user_id, left, int(Reason.SELF_TRADE))
                    return
                continue
            if by_quote:
                traded = min(maker.remaining, left // maker.price)
                if traded == 0:
                    break           # not one lot affordable at this price: stop
                left -= traded * maker.price
            else:
                traded = min(maker.remaining, left)
                left -= traded
            maker.remaining -= traded
            self.last_trade_id += 1
            self._emit(Trade, self.last_trade_id, maker.price, traded, side,
                       maker.order_id, maker.user_id, order_id, user_id,
                       fee(maker.price, traded, self.maker_fee_ppm),
                       fee(maker.price, traded, self.taker_fee_ppm))
            if maker.remaining == 0:
                self._emit(Done, maker.order_id, maker.user_id)
                self._remove(maker)
        if left == 0:
            self._emit(Done, order_id, user_id)
        elif kind == OrderKind.LIMIT_MAKER or (kind == OrderKind.LIMIT and tif == TimeInForce.GTC):
            self._rest(_Resting(order_id, user_id, side, price, left, stp))
        elif kind == OrderKind.MARKET:
            self._emit(Expired, order_id, user_id, left, int(Reason.NO_LIQUIDITY))
        else:
            self._emit(Expired, order_id, user_id, left, int(Reason.IOC_REMAINDER))

    def cancel(self, order_id, user_id, ts):
        order_id, user_id, ts = int(order_id), int(user_id), int(ts)
        self._begin(ts)
        order = self._resting.get(order_id)
        if order is None or order.user_id != user_id:
            self._emit(Rejected, order_id, user_id, int(ResultCode.UNKNOWN_ORDER))
        else:
            self._remove(order)
            self._emit(Cancelled, order_id, user_id, order.remaining, int(Reason.CANCELED))
        return self._end()

    def amend(self, order_id, user_id, new_price, new_qty, ts):
        order_id, user_id, new_price, new_qty, ts = map(
            int, (order_id, user_id, new_price, new_qty, ts))
        self._begin(ts)
        code = self._validate_amend(order_id, user_id, new_price, new_qty)
        if code is not None:
            self._emit(Rejected, order_id, user_id, int(code))
            return self._end()
        order = self._resting[order_id]
        keeps_priority = new_price == order.price and new_qty <= order.remaining
        if keeps_priority:
            order.remaining = new_qty
        else:
            self._remove(order)
            order.price, order.remaining = new_price, new_qty
            self._rest(order)
        self._emit(Amended, order_id, user_id, new_price, new_qty, keeps_priority)
        return self._end()

    def _validate_amend(self, order_id, user_id, new_price, new_qty):
        if not self.trading:
            return ResultCode.MARKET_CLOSED
        order = self._resting.get(order_id)
        if order is None or order.user_id != user_id:
            return ResultCode.UNKNOWN_ORDER
        if new_price <= 0:
            return ResultCode.INVALID_PRICE
        if new_qty <= 0:
            return ResultCode.INVALID_QUANTITY
        if new_price * new_qty < self.min_notional:
            return ResultCode.BELOW_MIN_NOTIONAL
        if self._would_cross(order.side, new_price):
            return ResultCode.AMEND_WOULD_CROSS
        if new_qty > order.remaining:
            return ResultCode.AMEND_WOULD_ENLARGE
        if order.side == Side.BUY and new_price * new_qty > order.price * order.remaining:
            return ResultCode.AMEND_WOULD_ENLARGE
        return None

    def cancel_all(self, user_id, ts):
        user_id, ts = int(user_id), int(ts)
        self._begin(ts)
        for order_id in sorted(o.order_id for o in self._resting.values()
                               if o.user_id == user_id):
            order = self._resting[order_id]
            self._remove(order)
            self._emit(Cancelled, order_id, user_id, order.remaining, int(Reason.CANCEL_ALL))
        return self._end()

    def set_trading(self, trading, ts):
        self._begin(int(ts))
        self.trading = bool(trading)
        self._emit(MarketStatus, self.trading)
        return self._end()

    def apply(self, cmd) -> list:
        name = type(cmd).__name__
        if name == "Place":
            return self.place(cmd.order_id, cmd.user_id, cmd.side, cmd.kind, cmd.tif,
                              cmd.price, cmd.qty, cmd.quote_qty, cmd.stp, cmd.ts)
        if name == "Cancel":
            return self.cancel(cmd.order_id, cmd.user_id, cmd.ts)
        if name == "Amend":
            return self.amend(cmd.order_id, cmd.user_id, cmd.new_price, cmd.new_qty, cmd.ts)
        if name == "CancelAll":
            return self.cancel_all(cmd.user_id, cmd.ts)
        if name == "SetTrading":
            return self.set_trading(cmd.trading, cmd.ts)
        raise TypeError(f"not an engine command: {cmd!r}")

    # ---- queries ----
    def orders(self) -> list[tuple[int, int, int, int, int, int]]:
        return [(o.order_id, o.user_id, o.side, o.price, o.remaining, o.stp)
                for side in (BUY, SELL) for o in self._side_in_priority(side)]

    def order(self, order_id):
        o = self._resting.get(order_id)
        return None if o is None else (o.user_id, o.side, o.price, o.remaining, o.stp)

    def depth(self, n: int):
        def levels(side):
            totals: dict[int, int] = {}
            for o in self._side_in_priority(side):
                totals[o.price] = totals.get(o.price, 0) + o.remaining
            return list(totals.items())[:n]     # dicts keep the priority order
        return levels(BUY), levels(SELL)

    def __len__(self) -> int:
        return len(self._resting)

    def resting_qty(self) -> int:
        return sum(o.remaining for o in self._resting.values())

    def dump(self) -> bytes:
        name = self.pair.encode()
        rows = self.orders()
        head = struct.pack("<H", len(name)) + name + struct.pack(
            "<BQQI", int(self.trading), self.seq, self.last_trade_id, len(rows))
        return head + b"".join(_ORDER_RECORD.pack(*row) for row in rows)

    @classmethod
    def restore(cls, section: bytes, min_notional: int = 0, maker_fee_ppm: int = 0,
                taker_fee_ppm: int = 0) -> ReferenceBook:
        """The inverse of dump(): records are already in priority order, so resting
        them one by one rebuilds every level's FIFO."""
        (name_len,) = struct.unpack_from("<H", section, 0)
        at = 2 + name_len
        pair = section[2:at].decode()
        trading, seq, last_trade_id, n = struct.unpack_from("<BQQI", section, at)
        at += struct.calcsize("<BQQI")
        book = cls(pair, min_notional, maker_fee_ppm, taker_fee_ppm, bool(trading))
        book.seq, book.last_trade_id = seq, last_trade_id
        for _ in range(n):
            book._rest(_Resting(*_ORDER_RECORD.unpack_from(section, at)))
            at += _ORDER_RECORD.size
        if at != len(section):
            raise ValueError(f"{len(section) - at} trailing bytes after {n} orders")
        return book
