"""Engine events -> rows for PostgreSQL: trades, and each order's net change per batch.

Pure. The sink has already dropped every event it applied before (seq <= the pair's
watermark), so each event here is applied exactly once and fills can be added as deltas.

Order state follows the events of engine.domain:
    Accepted  -> NEW, remaining = qty
    Trade     -> filled += qty, filled_quote += price * qty, remaining -= qty,
                 PARTIALLY_FILLED (for the maker and for the taker)
    Done      -> FILLED, remaining 0
    Cancelled -> CANCELED, remaining = what was left, reason
    Expired   -> EXPIRED, remaining = what was left (unspent quote for MARKET by quote)
    Amended   -> price and remaining replaced, status kept
    Rejected  -> a REJECTED row for an order id never seen; nothing for an existing order
                 (a rejected amend or cancel does not change it) nor for UNKNOWN_ORDER
                 (a cancel or amend of an id that is not resting names no new order)
"""
from __future__ import annotations

from collections.abc import Iterable

from engine.domain import (
    Accepted,
    Amended,
    Cancelled,
    Done,
    Expired,
    Rejected,
    ResultCode,
    Trade,
)

NEW, PARTIALLY_FILLED, FILLED = "NEW", "PARTIALLY_FILLED", "FILLED"
CANCELED, EXPIRED, REJECTED = "CANCELED", "EXPIRED", "REJECTED"
_OPEN = (None, NEW, PARTIALLY_FILLED)

TRADE_COLUMNS = ("pair", "trade_id", "seq", "ts", "price", "qty", "taker_side",
                 "maker_order_id", "maker_user_id", "taker_order_id", "taker_user_id",
                 "maker_fee", "taker_fee")
ORDER_COLUMNS = ("pair", "order_id", "user_id", "side", "kind", "tif", "price", "qty",
                 "quote_qty", "remaining", "filled_qty", "filled_quote", "status", "reason",
                 "created_ts", "updated_ts", "last_seq")
UPDATE_COLUMNS = ("pair", "order_id", "price", "remaining", "minus", "filled_qty",
                  "filled_quote", "status", "reason", "updated_ts", "last_seq")


class OrderChange:
    """What one batch does to one order: a whole new row, or a delta for an existing one."""

    __slots__ = ("pair", "order_id", "user_id", "accepted", "rejected_only", "side", "kind",
                 "tif", "price", "qty", "quote_qty", "remaining", "minus", "filled_qty",
                 "filled_quote", "status", "reason", "created_ts", "updated_ts", "last_seq")

    def __init__(self, pair: str, order_id: int, user_id: int) -> None:
        self.pair, self.order_id, self.user_id = pair, order_id, user_id
        self.accepted = self.rejected_only = False
        self.side = self.kind = self.tif = self.price = self.qty = self.quote_qty = None
        self.remaining: int | None = None     # absolute remaining when an event set it
        self.minus = 0                        # lots filled after that (or since the batch began)
        self.filled_qty = self.filled_quote = 0
        self.status: str | None = None
        self.reason: int | None = None
        self.created_ts = self.updated_ts = self.last_seq = 0

    def touch(self, seq: int, ts: int) -> None:
        self.updated_ts, self.last_seq = ts, seq

    def exit(self, status: str, remaining: int, reason: int | None, seq: int, ts: int) -> None:
        self.status, self.remaining, self.minus, self.reason = status, remaining, 0, reason
        self.touch(seq, ts)

    def row(self) -> tuple:
        """The full row, for an order accepted (or rejected) within this batch."""
        remaining = None if self.remaining is None else self.remaining - self.minus
        return (self.pair, self.order_id, self.user_id, self.side, self.kind, self.tif,
                self.price, self.qty, self.quote_qty, remaining, self.filled_qty,
                self.filled_quote, self.status, self.reason, self.created_ts,
                self.updated_ts, self.last_seq)

    def update(self) -> tuple:
        """The delta, for an order whose row already exists (see UPDATE_COLUMNS)."""
        return (self.pair, self.order_id, self.price, self.remaining, self.minus,
                self.filled_qty, self.filled_quote, self.status, self.reason,
                self.updated_ts, self.last_seq)


class BatchRows:
    """Rows of one batch of events, in the order the database needs them."""

    def __init__(self) -> None:
        self.trades: list[tuple] = []
        self.orders: dict[tuple[str, int], OrderChange] = {}

    def new_orders(self) -> list[tuple]:
        return [c.row() for c in self.orders.values() if c.accepted]

    def rejected_orders(self) -> list[tuple]:
        return [c.row() for c in self.orders.values() if c.rejected_only]

    def order_updates(self) -> list[tuple]:
        return [c.update() for c in self.orders.values()
                if not c.accepted and not c.rejected_only]

    def _change(self, pair: str, order_id: int, user_id: int) -> OrderChange:
        key = (pair, order_id)
        change = self.orders.get(key)
        if change is None:
            change = self.orders[key] = OrderChange(pair, order_id, user_id)
        elif change.rejected_only:
            # A place rejected as DUPLICATE_ORDER_ID named an order that rests from an
            # earlier batch; what follows in this batch is that order's, not a new one.
            change.rejected_only, change.status, change.reason = False, None, None
        return change

    def _fill(self, pair: str, order_id: int, user_id: int, e: Trade) -> None:
        c = self._change(pair, order_id, user_id)
        c.filled_qty += e.qty
        c.filled_quote += e.price * e.qty
        c.minus += e.qty
        if c.status in _OPEN:
            c.status = PARTIALLY_FILLED
        c.touch(e.seq, e.ts)

    def add(self, e) -> None:
        kind = type(e)
        if kind is Trade:
            self.trades.append((e.pair, e.trade_id, e.seq, e.ts, e.price, e.qty, e.taker_side,
                                e.maker_order_id, e.maker_user_id, e.taker_order_id,
                                e.taker_user_id, e.maker_fee, e.taker_fee))
            self._fill(e.pair, e.maker_order_id, e.maker_user_id, e)
            self._fill(e.pair, e.taker_order_id, e.taker_user_id, e)
        elif kind is Accepted:
            c = self._change(e.pair, e.order_id, e.user_id)
            c.accepted, c.rejected_only = True, False
            c.side, c.kind, c.tif = e.side, e.kind, e.tif
            c.price, c.qty, c.quote_qty = e.price, e.qty, e.quote_qty
            c.remaining, c.minus, c.status, c.created_ts = e.qty, 0, NEW, e.ts
            c.touch(e.seq, e.ts)
        elif kind is Done:
            self._change(e.pair, e.order_id, e.user_id).exit(FILLED, 0, None, e.seq, e.ts)
        elif kind is Cancelled:
            self._change(e.pair, e.order_id, e.user_id).exit(
                CANCELED, e.remaining, e.reason, e.seq, e.ts)
        elif kind is Expired:
            self._change(e.pair, e.order_id, e.user_id).exit(
                EXPIRED, e.remaining, e.reason, e.seq, e.ts)
        elif kind is Amended:
            c = self._change(e.pair, e.order_id, e.user_id)
            c.price, c.remaining, c.minus = e.price, e.qty, 0
            c.touch(e.seq, e.ts)
        elif kind is Rejected:
            if e.code == ResultCode.UNKNOWN_ORDER or (e.pair, e.order_id) in self.orders:
                return
            c = self._change(e.pair, e.order_id, e.user_id)
            c.rejected_only, c.status, c.reason, c.created_ts = True, REJECTED, e.code, e.ts
            c.touch(e.seq, e.ts)
        # MarketStatus changes no order and no trade.


def batch_rows(events: Iterable) -> BatchRows:
    rows = BatchRows()
    for event in events:
        rows.add(event)
    return rows
