"""The pure-Python order book of one pair: price-time priority in integer ticks and lots.

Semantics are engine.domain's docstring, exactly; this module only chooses the data
structures. Per side: a dict price -> level and a sorted list of level keys, best first
(asks keyed by price, bids by -price), so the best price is keys[0]. A level is
[total_qty, live_orders, deque of order records]. An order record is a mutable list
[order_id, user_id, side, price, remaining, stp]; cancelling one in the middle of its
queue only zeroes `remaining` (O(1)), and matching drops such dead records when they
reach the front. A queue is compacted when dead records outnumber live ones.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

from engine.domain import (
    PPM,
    Accepted,
    Amend,
    Amended,
    Cancel,
    CancelAll,
    Cancelled,
    Done,
    Expired,
    MarketStatus,
    Place,
    Reason,
    Rejected,
    ResultCode,
    SetTrading,
    Trade,
)
from engine.snapshot import SnapshotError, pack_section, unpack_section

# Plain ints on the hot path (events carry ints, not enum members).
BUY, SELL = 0, 1
LIMIT, MARKET, LIMIT_MAKER = 0, 1, 2
GTC, IOC, FOK = 0, 1, 2
STP_NONE, EXPIRE_TAKER, EXPIRE_MAKER, EXPIRE_BOTH = 0, 1, 2, 3
CANCELED, CANCEL_ALL, IOC_REMAINDER, NO_LIQUIDITY, SELF_TRADE = (int(r) for r in Reason)
R_CLOSED = int(ResultCode.MARKET_CLOSED)
R_DUPLICATE = int(ResultCode.DUPLICATE_ORDER_ID)
R_PRICE = int(ResultCode.INVALID_PRICE)
R_QTY = int(ResultCode.INVALID_QUANTITY)
R_NOTIONAL = int(ResultCode.BELOW_MIN_NOTIONAL)
R_POST_ONLY = int(ResultCode.POST_ONLY_WOULD_CROSS)
R_FOK = int(ResultCode.FOK_NOT_FILLABLE)
R_UNKNOWN = int(ResultCode.UNKNOWN_ORDER)
R_AMEND_CROSS = int(ResultCode.AMEND_WOULD_CROSS)
R_AMEND_ENLARGE = int(ResultCode.AMEND_WOULD_ENLARGE)
R_INVALID = int(ResultCode.INVALID_REQUEST)

# Events are built with tuple.__new__: the same NamedTuple instances as Cls(...), without
# the Python-level __new__ frame (a third of the cost of building an event).
_new = tuple.__new__

# Record fields.
OID, UID, SIDE, PRICE, REM, STP = range(6)
# Level fields.
TOTAL, LIVE, QUEUE = range(3)


class OrderBook:
    __slots__ = ("_pair", "_min_notional", "_maker_ppm", "_taker_ppm", "_trading", "_seq",
                 "_trade_id", "_orders", "_levels", "_keys", "_dirty", "_dispatch")

    def __init__(self, pair: str, min_notional: int = 0, maker_fee_ppm: int = 0,
                 taker_fee_ppm: int = 0, trading: bool = True) -> None:
        self._pair = pair
        self._min_notional = min_notional
        self._maker_ppm = maker_fee_ppm
        self._taker_ppm = taker_fee_ppm
        self._trading = bool(trading)
        self._seq = 0
        self._trade_id = 0
        self._orders: dict[int, list] = {}
        self._levels: tuple[dict, dict] = ({}, {})
        self._keys: tuple[list, list] = ([], [])
        self._dirty: tuple[set, set] = (set(), set())
        # Each command's fields after `pair` are exactly the method's arguments, in order.
        self._dispatch = {Place: self.place, Cancel: self.cancel, Amend: self.amend,
                          CancelAll: self.cancel_all, SetTrading: self.set_trading}

    # ---- read-only attributes ----
    pair = property(lambda self: self._pair)
    min_notional = property(lambda self: self._min_notional)
    maker_fee_ppm = property(lambda self: self._maker_ppm)
    taker_fee_ppm = property(lambda self: self._taker_ppm)
    trading = property(lambda self: self._trading)
    seq = property(lambda self: self._seq)
    last_trade_id = property(lambda self: self._trade_id)

    # ---- commands ----
    def apply(self, cmd) -> list:
        return self._dispatch[type(cmd)](*cmd[1:])

    def apply_many(self, cmds) -> list:
        out: list = []
        dispatch = self._dispatch
        for cmd in cmds:
            out += dispatch[type(cmd)](*cmd[1:])
        return out

    def _reject(self, ts, order_id, user_id, code) -> list:
        self._seq += 1
        return [_new(Rejected, (self._pair, self._seq, ts, order_id, user_id, code))]

    def place(self, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts) -> list:
        side, kind, tif, stp = int(side), int(kind), int(tif), int(stp)
        code = self._check_place(order_id, user_id, side, kind, tif, price, qty, quote_qty, stp)
        if code:
            return self._reject(ts, order_id, user_id, code)
        pair = self._pair
        self._seq += 1
        events = [_new(Accepted, (pair, self._seq, ts, order_id, user_id, side, kind, tif,
                                  price, qty, quote_qty))]
        if kind == LIMIT_MAKER:
            self._rest([order_id, user_id, side, price, qty, stp])
            return events
        by_quote = kind == MARKET and quote_qty > 0
        left = quote_qty if by_quote else qty
        # Only walk the book when its best price is acceptable at all.
        keys = self._keys[1 - side]
        if keys:
            best = keys[0] if side == BUY else -keys[0]
            if not price or (best <= price if side == BUY else best >= price):
                left, expired = self._match(events, order_id, user_id, side, price, left,
                                            by_quote, stp, ts)
                if expired:
                    return events
        if not left:
            self._seq += 1
            events.append(_new(Done, (pair, self._seq, ts, order_id, user_id)))
        elif kind == LIMIT and tif == GTC:
            self._rest([order_id, user_id, side, price, left, stp])
        else:
            self._seq += 1
            events.append(_new(Expired, (pair, self._seq, ts, order_id, user_id, left,
                                         IOC_REMAINDER if kind == LIMIT else NO_LIQUIDITY)))
        return events

    def _check_place(self, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp):
        """The first failing validation step's code, or 0 (domain.py steps 1-7)."""
        if not self._trading:
            return R_CLOSED
        if order_id in self._orders:
            return R_DUPLICATE
        # Not a numbered step: an enum out of range means a malformed request.
        if side not in (0, 1) or kind not in (0, 1, 2) or tif not in (0, 1, 2) \
                or stp not in (0, 1, 2, 3):
            return R_INVALID
        if kind == MARKET:
            if price < 0:
                return R_PRICE
            if not ((qty > 0 and quote_qty == 0) or (quote_qty > 0 and qty == 0)):
                return R_QTY
            if quote_qty and quote_qty < self._min_notional:
                return R_NOTIONAL
            return 0
        if price <= 0:
            return R_PRICE
        if qty <= 0 or quote_qty != 0:
            return R_QTY
        if price * qty < self._min_notional:
            return R_NOTIONAL
        if kind == LIMIT_MAKER:
            if self._would_cross(side, price):
                return R_POST_ONLY
        elif tif == FOK and not self._fillable(user_id, side, price, qty, stp):
            return R_FOK
        return 0

    def _would_cross(self, side, price) -> bool:
        keys = self._keys[1 - side]
        if not keys:
            return False
        return price >= keys[0] if side == BUY else price <= -keys[0]

    def _fillable(self, user_id, side, price, qty, stp) -> bool:
        """Could a FOK order fill entirely? A dry run of the walk that changes nothing."""
        opp = 1 - side
        levels = self._levels[opp]
        need = qty
        for key in self._keys[opp]:
            lp = key if opp == SELL else -key
            if lp > price if side == BUY else lp < price:
                return False
            level = levels[lp]
            if stp == STP_NONE:
                need -= level[TOTAL]
                if need <= 0:
                    return True
                continue
            for maker in level[QUEUE]:
                rem = maker[REM]
                if not rem:
                    continue
                if maker[UID] == user_id:
                    if stp == EXPIRE_MAKER:
                        continue
                    return False
                need -= rem
                if need <= 0:
                    return True
        return False

    def _match(self, events, order_id, user_id, side, price, left, by_quote, stp, ts):
        """Walk the opposite side; returns (left, taker expired by self-trade prevention)."""
        opp = 1 - side
        keys, levels, dirty = self._keys[opp], self._levels[opp], self._dirty[opp]
        orders = self._orders
        pair, seq, trade_id = self._pair, self._seq, self._trade_id
        maker_ppm, taker_ppm = self._maker_ppm, self._taker_ppm
        append = events.append
        stopped = expired = False
        while left and keys:
            lp = keys[0] if opp == SELL else -keys[0]
            if price and (lp > price if side == BUY else lp < price):
                break
            level = levels[lp]
            queue = level[QUEUE]
            while level[LIVE]:
                maker = queue[0]
                rem = maker[REM]
                if not rem:
                    queue.popleft()
                    continue
                if stp and maker[UID] == user_id:
                    if stp != EXPIRE_TAKER:
                        seq += 1
                        append(_new(Expired, (pair, seq, ts, maker[OID], user_id, rem,
                                              SELF_TRADE)))
                        queue.popleft()
                        maker[REM] = 0
                        level[TOTAL] -= rem
                        level[LIVE] -= 1
                        del orders[maker[OID]]
                        dirty.add(lp)
                        if stp == EXPIRE_MAKER:
                            continue
                    seq += 1
                    append(_new(Expired, (pair, seq, ts, order_id, user_id, left, SELF_TRADE)))
                    stopped = expired = True
                    break
                if by_quote:
                    traded = left // lp
                    if not traded:
                        stopped = True
                        break
                    if traded > rem:
                        traded = rem
                    left -= traded * lp
                else:
                    traded = left if left < rem else rem
                    left -= traded
                trade_id += 1
                seq += 1
                notional = lp * traded
                append(_new(Trade, (pair, seq, ts, trade_id, lp, traded, side, maker[OID],
                                    maker[UID], order_id, user_id,
                                    -((-notional * maker_ppm) // PPM),
                                    -((-notional * taker_ppm) // PPM))))
                rem -= traded
                maker[REM] = rem
                level[TOTAL] -= traded
                dirty.add(lp)
                if not rem:
                    queue.popleft()
                    level[LIVE] -= 1
                    del orders[maker[OID]]
                    seq += 1
                    append(_new(Done, (pair, seq, ts, maker[OID], maker[UID])))
                if not left:
                    break
            if not level[LIVE]:
                del levels[lp]
                del keys[0]
            if stopped:
                break
        self._seq, self._trade_id = seq, trade_id
        return left, expired

    def cancel(self, order_id, user_id, ts) -> list:
        order = self._orders.get(order_id)
        if order is None or order[UID] != user_id:
            return self._reject(ts, order_id, user_id, R_UNKNOWN)
        remaining = order[REM]
        self._unlink(order)
        self._seq += 1
        return [_new(Cancelled, (self._pair, self._seq, ts, order_id, user_id, remaining,
                                 CANCELED))]

    def amend(self, order_id, user_id, new_price, new_qty, ts) -> list:
        if not self._trading:
            return self._reject(ts, order_id, user_id, R_CLOSED)
        order = self._orders.get(order_id)
        if order is None or order[UID] != user_id:
            return self._reject(ts, order_id, user_id, R_UNKNOWN)
        if new_price <= 0:
            return self._reject(ts, order_id, user_id, R_PRICE)
        if new_qty <= 0:
            return self._reject(ts, order_id, user_id, R_QTY)
        if new_price * new_qty < self._min_notional:
            return self._reject(ts, order_id, user_id, R_NOTIONAL)
        side = order[SIDE]
        if self._would_cross(side, new_price):
            return self._reject(ts, order_id, user_id, R_AMEND_CROSS)
        # Never enlarge: accounts' hold cannot see fills in flight (domain.py, amend).
        remaining = order[REM]
        if new_qty > remaining or (side == BUY and new_price * new_qty > order[PRICE] * remaining):
            return self._reject(ts, order_id, user_id, R_AMEND_ENLARGE)
        kept = new_price == order[PRICE]
        if kept:
            reduced = order[REM] - new_qty
            if reduced:
                order[REM] = new_qty
                self._levels[side][new_price][TOTAL] -= reduced
                self._dirty[side].add(new_price)
        else:
            self._unlink(order)
            self._rest([order_id, user_id, side, new_price, new_qty, order[STP]])
        self._seq += 1
        return [_new(Amended, (self._pair, self._seq, ts, order_id, user_id, new_price,
                               new_qty, kept))]

    def cancel_all(self, user_id, ts) -> list:
        # A scan rather than a per-user index: cancel_all is rare, place is the hot path.
        mine = sorted(oid for oid, order in self._orders.items() if order[UID] == user_id)
        events = []
        pair = self._pair
        for oid in mine:
            order = self._orders[oid]
            remaining = order[REM]
            self._unlink(order)
            self._seq += 1
            events.append(_new(Cancelled, (pair, self._seq, ts, oid, user_id, remaining,
                                           CANCEL_ALL)))
        return events

    def set_trading(self, trading, ts) -> list:
        self._trading = bool(trading)
        self._seq += 1
        return [_new(MarketStatus, (self._pair, self._seq, ts, self._trading))]

    # ---- resting orders ----
    def _rest(self, order) -> None:
        """Put a record at the back of its level (creating the level if needed)."""
        side, price = order[SIDE], order[PRICE]
        levels = self._levels[side]
        level = levels.get(price)
        if level is None:
            level = levels[price] = [0, 0, deque()]
            insort(self._keys[side], price if side == SELL else -price)
        level[TOTAL] += order[REM]
        level[LIVE] += 1
        level[QUEUE].append(order)
        self._dirty[side].add(price)
        self._orders[order[OID]] = order

    def _unlink(self, order) -> None:
        """Take a resting order out of the book wherever it sits in its queue."""
        side, price = order[SIDE], order[PRICE]
        levels = self._levels[side]
        level = levels[price]
        level[TOTAL] -= order[REM]
        level[LIVE] -= 1
        order[REM] = 0
        del self._orders[order[OID]]
        self._dirty[side].add(price)
        if not level[LIVE]:
            del levels[price]
            keys = self._keys[side]
            del keys[bisect_left(keys, price if side == SELL else -price)]
        elif len(level[QUEUE]) > 2 * level[LIVE] + 16:
            level[QUEUE] = deque(o for o in level[QUEUE] if o[REM])

    # ---- queries ----
    def best_bid(self) -> int | None:
        keys = self._keys[BUY]
        return -keys[0] if keys else None

    def best_ask(self) -> int | None:
        keys = self._keys[SELL]
        return keys[0] if keys else None

    def depth(self, n: int) -> tuple[list, list]:
        bids, asks = self._levels
        return ([(-k, bids[-k][TOTAL]) for k in self._keys[BUY][:n]],
                [(k, asks[k][TOTAL]) for k in self._keys[SELL][:n]])

    def take_level_changes(self) -> list:
        changes = []
        for side in (BUY, SELL):
            dirty, levels = self._dirty[side], self._levels[side]
            for price in sorted(dirty):
                level = levels.get(price)
                changes.append((side, price, level[TOTAL] if level else 0))
            dirty.clear()
        return changes

    def order(self, order_id):
        order = self._orders.get(order_id)
        if order is None:
            return None
        return (order[UID], order[SIDE], order[PRICE], order[REM], order[STP])

    def orders(self) -> list:
        out = []
        for side in (BUY, SELL):
            levels = self._levels[side]
            for key in self._keys[side]:
                out.extend(tuple(o) for o in levels[key if side == SELL else -key][QUEUE]
                           if o[REM])
        return out

    def __len__(self) -> int:
        return len(self._orders)

    def resting_qty(self) -> int:
        return sum(level[TOTAL] for side in self._levels for level in side.values())

    # ---- snapshot ----
    def dump(self) -> bytes:
        return pack_section(self._pair, self._trading, self._seq, self._trade_id, self.orders())

    @classmethod
    def restore(cls, section: bytes, min_notional: int = 0, maker_fee_ppm: int = 0,
                taker_fee_ppm: int = 0) -> OrderBook:
        parsed = unpack_section(section)
        book = cls(parsed.pair, min_notional, maker_fee_ppm, taker_fee_ppm, parsed.trading)
        book._seq, book._trade_id = parsed.seq, parsed.last_trade_id
        for record in parsed.orders:
            book._rest(list(record))
        for dirty in book._dirty:
            dirty.clear()   # a restored book starts with no pending level changes
        if len(book._orders) != len(parsed.orders):
            raise SnapshotError(f"{parsed.pair}: duplicate order ids")
        return book
