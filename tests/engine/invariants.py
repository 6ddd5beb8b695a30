"""Invariants of one order book, checked from its own events and its own queries.

`BookAuditor` follows a book command by command. From the events alone it rebuilds what
must be resting (price, remaining, owner, arrival order) and checks each event against
the contract: seq and trade ids without gaps, trades at the maker's price and within
the taker's limit, fees by engine.domain.fee, every order's quantity conserved
(placed = filled + cancelled/expired + resting). Then it checks the book's queries
against that picture: never crossed, no empty order, price-then-time priority, depth,
totals and level-change records.
"""
from __future__ import annotations

from engine.domain import (
    STP,
    Accepted,
    Amended,
    Cancelled,
    Done,
    Expired,
    MarketStatus,
    OrderKind,
    Place,
    Reason,
    Rejected,
    TimeInForce,
    Trade,
    fee,
)

BUY = 0


class BookAuditor:
    def __init__(self, book, pair: str, maker_fee_ppm: int, taker_fee_ppm: int) -> None:
        self.book = book
        self.pair = pair
        self.maker_fee_ppm = maker_fee_ppm
        self.taker_fee_ppm = taker_fee_ppm
        self.seq = book.seq
        self.trade_id = book.last_trade_id
        self.arrivals = 0
        # order_id -> [user, side, price, remaining, stp, arrival], from events only
        self.live: dict[int, list] = {}
        for row in book.orders():
            self._rest(*row)
        self.levels = self._levels_from(book.orders())
        if hasattr(book, "take_level_changes"):
            book.take_level_changes()

    def _rest(self, order_id, user, side, price, remaining, stp) -> None:
        self.arrivals += 1
        self.live[order_id] = [user, side, price, remaining, stp, self.arrivals]

    @staticmethod
    def _levels_from(rows) -> dict[tuple[int, int], int]:
        levels: dict[tuple[int, int], int] = {}
        for _, _, side, price, remaining, _ in rows:
            levels[(side, price)] = levels.get((side, price), 0) + remaining
        return levels

    # ---- one command ----
    def check(self, cmd, events) -> None:
        taker = None            # [order_id, user, side, kind, limit, left, by_quote, stp]
        taker_closed = False
        for ev in events:
            assert ev.pair == self.pair and ev.ts == cmd.ts, ev
            assert ev.seq == self.seq + 1, f"seq gap: {ev.seq} after {self.seq}"
            self.seq = ev.seq
            kind = type(ev)
            if kind is Accepted:
                assert isinstance(cmd, Place) and taker is None, ev
                by_quote = ev.kind == OrderKind.MARKET and ev.quote_qty > 0
                taker = [ev.order_id, ev.user_id, ev.side, ev.kind, ev.price,
                         ev.quote_qty if by_quote else ev.qty, by_quote, cmd.stp]
                assert ev.order_id not in self.live, f"accepted a resting id: {ev}"
            elif kind is Trade:
                self._trade(ev, taker, taker_closed)
            elif kind is Done:
                if taker is not None and ev.order_id == taker[0] and ev.user_id == taker[1] \
                        and not taker_closed:
                    assert taker[5] == 0, f"Done for taker with {taker[5]} left"
                    taker_closed = True
                else:
                    maker = self.live.pop(ev.order_id)
                    assert maker[3] == 0 and maker[0] == ev.user_id, (ev, maker)
            elif kind is Expired:
                if taker is not None and ev.order_id == taker[0] and not taker_closed:
                    assert ev.remaining == taker[5] > 0, (ev, taker)
                    taker_closed = True
                    if ev.reason == Reason.SELF_TRADE:
                        assert taker[7] in (STP.EXPIRE_TAKER, STP.EXPIRE_BOTH), ev
                else:
                    maker = self.live.pop(ev.order_id)
                    assert ev.reason == Reason.SELF_TRADE and taker is not None, ev
                    assert maker[0] == taker[1] == ev.user_id, (ev, maker)
                    assert taker[7] in (STP.EXPIRE_MAKER, STP.EXPIRE_BOTH), ev
                    assert ev.remaining == maker[3] > 0, (ev, maker)
            elif kind is Cancelled:
                order = self.live.pop(ev.order_id)
                assert ev.user_id == order[0] and ev.remaining == order[3] > 0, (ev, order)
            elif kind is Amended:
                order = self.live[ev.order_id]
                # Never enlarged: no more lots, and for a buy no more notional.
                assert 0 < ev.qty <= order[3], (ev, order)
                assert order[1] != BUY or ev.price * ev.qty <= order[2] * order[3], (
                    ev, order)
                keeps = ev.price == order[2] and ev.qty <= order[3]
                assert ev.priority_kept is keeps, (ev, order)
                order[2], order[3] = ev.price, ev.qty
                if not keeps:
                    self.arrivals += 1
                    order[5] = self.arrivals
            else:
                assert kind in (Rejected, MarketStatus), f"unexpected event {ev!r}"
        if taker is not None and not taker_closed:
            order_id, user, side, kind, price, left, _, stp = taker
            rests = kind == OrderKind.LIMIT_MAKER or (
                kind == OrderKind.LIMIT and cmd.tif == TimeInForce.GTC)
            assert rests and left > 0, f"taker {order_id} neither closed nor resting"
            self._rest(order_id, user, side, price, left, stp)
        self._check_state()

    def _trade(self, ev, taker, taker_closed) -> None:
        assert taker is not None and not taker_closed, f"trade without a live taker: {ev}"
        assert ev.trade_id == self.trade_id + 1, f"trade id gap: {ev.trade_id}"
        self.trade_id = ev.trade_id
        order_id, user, side, kind, limit, left, by_quote, _ = taker
        assert (ev.taker_order_id, ev.taker_user_id, ev.taker_side) == (order_id, user, side)
        maker = self.live[ev.maker_order_id]
        assert maker[0] == ev.maker_user_id and maker[1] != side, (ev, maker)
        assert ev.price == maker[2], f"trade at {ev.price}, maker rests at {maker[2]}"
        if not (kind == OrderKind.MARKET and limit == 0):
            assert ev.price <= limit if side == BUY else ev.price >= limit, (ev, limit)
        assert 0 < ev.qty <= maker[3], (ev, maker)
        assert ev.maker_fee == fee(ev.price, ev.qty, self.maker_fee_ppm), ev
        assert ev.taker_fee == fee(ev.price, ev.qty, self.taker_fee_ppm), ev
        maker[3] -= ev.qty
        taker[5] -= ev.price * ev.qty if by_quote else ev.qty
        assert taker[5] >= 0, f"taker over-filled: {ev}"

    # ---- the book's queries against the picture rebuilt from events ----
    def _check_state(self) -> None:
        book = self.book
        assert book.seq == self.seq and book.last_trade_id == self.trade_id
        rows = book.orders()
        assert len(book) == len(rows) == len(self.live)
        assert book.resting_qty() == sum(r[4] for r in rows)
        seen = {}
        for order_id, user, side, price, remaining, stp in rows:
            assert remaining > 0, f"resting order {order_id} with {remaining}"
            expect = self.live[order_id]
            assert [user, side, price, remaining, stp] == expect[:5], (order_id, expect)
            assert book.order(order_id) == (user, side, price, remaining, stp)
            seen[order_id] = expect[5]
        # priority: bids by price desc then arrival, then asks by price asc then arrival
        want = sorted(rows, key=lambda r: (r[2], -r[3] if r[2] == BUY else r[3],
                                           seen[r[0]]))
        assert rows == want, "orders() is not in price-then-time priority"
        bids = [r[3] for r in rows if r[2] == BUY]
        asks = [r[3] for r in rows if r[2] != BUY]
        assert book.best_bid() == (bids[0] if bids else None)
        assert book.best_ask() == (asks[0] if asks else None)
        if bids and asks:
            assert bids[0] < asks[0], f"crossed book at rest: {bids[0]} >= {asks[0]}"
        levels = self._levels_from(rows)
        depth_bids = sorted(((p, q) for (s, p), q in levels.items() if s == BUY), reverse=True)
        depth_asks = sorted((p, q) for (s, p), q in levels.items() if s != BUY)
        got = book.depth(3)
        assert (list(got[0]), list(got[1])) == (depth_bids[:3], depth_asks[:3]), got
        if hasattr(book, "take_level_changes"):
            self._check_level_changes(book.take_level_changes(), levels)
        self.levels = levels

    def _check_level_changes(self, changes, levels) -> None:
        keys = [(side, price) for side, price, _ in changes]
        assert keys == sorted(set(keys)), f"level changes not distinct and sorted: {changes}"
        for side, price, total in changes:
            assert total == levels.get((side, price), 0), (side, price, total)
        moved = {k for k in set(levels) | set(self.levels)
                 if levels.get(k, 0) != self.levels.get(k, 0)}
        assert moved <= set(keys), f"levels {sorted(moved - set(keys))} changed unreported"
