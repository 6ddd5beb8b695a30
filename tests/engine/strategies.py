"""Command generators for the book property tests: Hypothesis strategies and a seeded walk.

Both produce *abstract* ops that name their target loosely ("the 3rd live order",
"an id used earlier", "an id never used"); `CommandMaker` resolves them into
engine.domain commands against the reference book's state at the moment they run.
That keeps cancels and amends aimed at real orders most of the time while every
sequence stays a plain, shrinkable list. Prices sit in a narrow band and a handful
of users share the book, so crossings and self-trades are common.
"""
from __future__ import annotations

import random
from typing import NamedTuple

from hypothesis import strategies as st

from engine.domain import (
    STP,
    Amend,
    Cancel,
    CancelAll,
    OrderKind,
    Place,
    SetTrading,
    Side,
    TimeInForce,
)

PAIR = "TESTPAIR"
USERS = (1, 2, 3, 4)
LOW, MID, HIGH = 96, 100, 104       # price band in ticks: books cross often
MAX_QTY = 12
STPS = tuple(int(s) for s in STP)
BUY, SELL = int(Side.BUY), int(Side.SELL)
LIMIT, MARKET, MAKER = int(OrderKind.LIMIT), int(OrderKind.MARKET), int(OrderKind.LIMIT_MAKER)
GTC, IOC, FOK = int(TimeInForce.GTC), int(TimeInForce.IOC), int(TimeInForce.FOK)
UNKNOWN_BASE = 1_000_000            # ids from here up were never placed


class MarketSpec(NamedTuple):
    min_notional: int
    maker_fee_ppm: int
    taker_fee_ppm: int
    trading: bool = True


# Fee rates chosen so ceil() matters: at ~100 ticks x ~5 lots, 1000 ppm is 0.5 units.
MARKETS = (
    MarketSpec(0, 0, 0),
    MarketSpec(0, 1_000, 2_500),
    MarketSpec(300, 100, 250),
    MarketSpec(1_000, 0, 1),
    MarketSpec(200, 7, 13, trading=False),
)


# ---- abstract ops ----

class PlaceOp(NamedTuple):
    user: int
    side: int
    kind: int
    tif: int
    price: int
    qty: int
    quote_qty: int
    stp: int
    reuse: int | None = None        # None: a fresh id; k: the k-th id placed so far


class Target(NamedTuple):
    mode: str                       # "live" | "any" | "unknown"
    k: int
    foreign: bool                   # act as another user than the owner


class CancelOp(NamedTuple):
    target: Target


class AmendOp(NamedTuple):
    target: Target
    price: int | None               # None: keep the price
    qty_delta: int | None           # new qty = remaining + delta; None: use `qty`
    qty: int = 0


class CancelAllOp(NamedTuple):
    user: int


class SetTradingOp(NamedTuple):
    trading: bool


# ---- resolving ops into commands ----

class CommandMaker:
    """Turns abstract ops into commands; remembers every id it handed out."""

    def __init__(self, pair: str = PAIR, price_scale: int = 1, qty_scale: int = 1,
                 first_id: int = 1) -> None:
        # Scales stretch the same scenarios to huge ints (price * qty * fee rate far
        # beyond 64 bits) without changing which orders cross.
        self.pair = pair
        self.price_scale, self.qty_scale = price_scale, qty_scale
        self.placed: list[tuple[int, int]] = []       # (order_id, user_id) in order
        self.next_id = first_id

    def command(self, op, book, ts: int):
        ps, qs = self.price_scale, self.qty_scale
        if isinstance(op, PlaceOp):
            if op.reuse is not None and self.placed:
                order_id = self.placed[op.reuse % len(self.placed)][0]
            else:
                order_id, self.next_id = self.next_id, self.next_id + 1
            self.placed.append((order_id, op.user))
            return Place(self.pair, order_id, op.user, op.side, op.kind, op.tif, op.price * ps,
                         op.qty * qs, op.quote_qty * ps * qs, op.stp, ts)
        if isinstance(op, CancelOp):
            order_id, user_id, _ = self._resolve(op.target, book)
            return Cancel(self.pair, order_id, user_id, ts)
        if isinstance(op, AmendOp):
            order_id, user_id, rested = self._resolve(op.target, book)
            if op.price is not None:
                price = op.price * ps
            else:
                price = rested[2] if rested else LOW * ps
            if op.qty_delta is None:
                qty = op.qty * qs
            else:
                qty = (rested[3] if rested else qs) + op.qty_delta * qs
            return Amend(self.pair, order_id, user_id, price, qty, ts)
        if isinstance(op, CancelAllOp):
            return CancelAll(self.pair, op.user, ts)
        if isinstance(op, SetTradingOp):
            return SetTrading(self.pair, op.trading, ts)
        raise TypeError(op)

    def _resolve(self, target: Target, book):
        """(order_id, acting user, (user, side, price, remaining, stp) or None)."""
        if target.mode == "live" and len(book):
            row = book.orders()[target.k % len(book)]
            order_id, owner = row[0], row[1]
        elif target.mode in ("live", "any") and self.placed:
            order_id, owner = self.placed[target.k % len(self.placed)]
        else:
            order_id, owner = UNKNOWN_BASE + target.k, USERS[target.k % len(USERS)]
        user_id = USERS[(USERS.index(owner) + 1) % len(USERS)] if target.foreign else owner
        return order_id, user_id, book.order(order_id)


# ---- Hypothesis strategies ----

prices = st.integers(LOW, HIGH)
qtys = st.integers(1, MAX_QTY)
users = st.sampled_from(USERS)
sides = st.sampled_from((BUY, SELL))
stps = st.sampled_from(STPS)
# Mostly fresh ids; now and then an id used before (resting: duplicate; gone: reused).
reuses = st.tuples(st.integers(0, 5), st.integers(0, 200)).map(
    lambda t: t[1] if t[0] == 5 else None)
protections = st.one_of(st.just(0), prices)


def sided_price(side: int, offset: int) -> int:
    """A limit price `offset` ticks behind the mid on the order's own side; offsets
    below zero cross the mid, so both sides build up and still cross often."""
    return MID - offset if side == BUY else MID + offset


def weighted(*choices: tuple[st.SearchStrategy, int]) -> st.SearchStrategy:
    """Pick a strategy with the given integer weights; shrinks towards the first.
    (st.one_of(a, a, b) does not weigh `a` double: equal branches collapse.)"""
    pool = [strategy for strategy, weight in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def _place(kind, tif, price, qty, quote):
    kinds = kind if isinstance(kind, st.SearchStrategy) else st.just(kind)
    return st.builds(PlaceOp, users, sides, kinds, tif, price, qty, quote, stps, reuses)


def _sided(place: PlaceOp) -> PlaceOp:
    """Read the generated price as an offset (LOW..HIGH -> -4..4) behind the mid."""
    return place._replace(price=sided_price(place.side, place.price - MID + 2))


limits = _place(LIMIT, st.sampled_from((GTC, GTC, GTC, IOC, FOK)), prices, qtys,
                st.just(0)).map(_sided)
# LIMIT_MAKER always rests and MARKET never does, whatever tif says: mostly the usual
# tif, sometimes another one.
odd_tifs = st.sampled_from((GTC, GTC, GTC, IOC, FOK))
makers = _place(MAKER, odd_tifs, prices, qtys, st.just(0)).map(_sided)
markets_by_qty = _place(MARKET, odd_tifs.map(lambda t: (IOC, GTC, FOK)[t]), protections,
                        st.integers(1, 2 * MAX_QTY), st.just(0))
markets_by_quote = _place(MARKET, odd_tifs.map(lambda t: (IOC, GTC, FOK)[t]), protections,
                          st.just(0), st.integers(1, 2 * MAX_QTY * HIGH))
# Invalid inputs: zero/negative price or qty, both or neither of qty and quote, tiny
# notional, a quote on a limit order.
invalid_places = _place(st.sampled_from((LIMIT, MARKET, MAKER)), st.sampled_from((GTC, IOC)),
                        st.sampled_from((-1, 0, 1, LOW)), st.sampled_from((-1, 0, 1, 2)),
                        st.sampled_from((0, 0, 1, 50)))
places = weighted((limits, 8), (makers, 2), (markets_by_qty, 1), (markets_by_quote, 1),
                  (invalid_places, 1))

targets = st.builds(Target, st.sampled_from(("live", "live", "live", "live", "any", "unknown")),
                    st.integers(0, 50), st.integers(0, 4).map(lambda i: i == 4))
cancels = st.builds(CancelOp, targets)
amends = weighted(
    (st.builds(AmendOp, targets, st.none(), st.integers(-3, -1)), 1),               # reduce
    (st.builds(AmendOp, targets, st.none(), st.integers(0, 4)), 1),                 # keep/grow (grow: rejected)
    (st.builds(AmendOp, targets, prices, st.integers(-2, 2)), 1),                   # reprice
    (st.builds(AmendOp, targets, st.sampled_from((-1, 0, 1, LOW)), st.none(),
               st.sampled_from((-1, 0, 1, 3))), 1),                                 # invalid
)
ops = weighted((places, 13), (cancels, 3), (amends, 4),
               (st.builds(CancelAllOp, users), 1),
               (st.builds(SetTradingOp, st.integers(0, 3).map(lambda i: i != 1)), 1))
op_lists = st.lists(ops, min_size=10, max_size=120)
market_specs = st.sampled_from(MARKETS)


# ---- the same mix from a seeded random.Random, for long walks ----

def random_op(r: random.Random):
    u = r.random()
    if u < 0.68:
        reuse = r.randrange(200) if r.random() < 0.03 else None
        user, side, stp = r.choice(USERS), r.choice((BUY, SELL)), r.choice(STPS)
        v = r.random()
        if v < 0.62:
            return PlaceOp(user, side, LIMIT, r.choice((GTC, GTC, GTC, GTC, IOC, FOK)),
                           sided_price(side, r.randint(-2, 4)), r.randint(1, MAX_QTY), 0,
                           stp, reuse)
        if v < 0.76:
            tif = GTC if r.random() < 0.8 else r.choice((IOC, FOK))
            return PlaceOp(user, side, MAKER, tif, sided_price(side, r.randint(-1, 4)),
                           r.randint(1, MAX_QTY), 0, stp, reuse)
        protection = 0 if r.random() < 0.5 else r.randint(LOW, HIGH)
        tif = IOC if r.random() < 0.8 else r.choice((GTC, FOK))
        if v < 0.84:
            return PlaceOp(user, side, MARKET, tif, protection, r.randint(1, 2 * MAX_QTY),
                           0, stp, reuse)
        if v < 0.92:
            return PlaceOp(user, side, MARKET, tif, protection, 0,
                           r.randint(1, 2 * MAX_QTY * HIGH), stp, reuse)
        return PlaceOp(user, side, r.choice((LIMIT, MARKET, MAKER)), r.choice((GTC, IOC)),
                       r.choice((-1, 0, 1, LOW)), r.choice((-1, 0, 1, 2)),
                       r.choice((0, 0, 1, 50)), stp, reuse)
    target = Target(r.choice(("live", "live", "live", "live", "any", "unknown")),
                    r.randrange(50), r.random() < 0.08)
    if u < 0.79:
        return CancelOp(target)
    if u < 0.975:
        w = r.random()
        if w < 0.3:
            return AmendOp(target, None, r.randint(-3, -1))
        if w < 0.55:
            return AmendOp(target, None, r.randint(0, 4))
        if w < 0.9:
            return AmendOp(target, r.randint(LOW, HIGH), r.randint(-2, 2))
        return AmendOp(target, r.choice((-1, 0, 1, LOW)), None, r.choice((-1, 0, 1, 3)))
    if u < 0.995:
        return CancelAllOp(r.choice(USERS))
    return SetTradingOp(r.random() < 0.93)
