"""The standard workload: a seeded stream of limit, crossing-limit, market and cancel ops.

Used by the engine benchmark and by tests that pin exact totals. Operations are
`(kind, order_id, side, price, qty)`; `to_commands` turns them into engine commands
where every order belongs to its own user.
"""
from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator

from engine.domain import STP, Cancel, OrderKind, Place, TimeInForce

MID = 1_000_000
BUY, SELL = 0, 1
LIMIT, XLIMIT, MARKET, CANCEL = 0, 1, 2, 3
PAIR = "BENCH"


def operations(n: int, seed: int = 42) -> list[tuple[int, int, int, int, int]]:
    r = random.Random(seed)
    live: list[int] = []
    nid = 0
    ops: list[tuple[int, int, int, int, int]] = []
    append = ops.append
    for _ in range(n):
        u = r.random()
        if u < 0.30 and live:
            i = r.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            append((CANCEL, live.pop(), 0, 0, 0))
            continue
        nid += 1
        side = r.getrandbits(1)
        qty = r.randint(1, 100)
        if u < 0.90:
            off = r.randint(0, 49)
            append((LIMIT, nid, side, MID - off if side == BUY else MID + 1 + off, qty))
            live.append(nid)
        elif r.random() < 0.5:
            k = r.randint(1, 50)
            append((XLIMIT, nid, side, MID + k if side == BUY else MID + 1 - k, qty))
        else:
            append((MARKET, nid, side, 0, qty))
    return ops


def digest(ops: list[tuple[int, int, int, int, int]]) -> str:
    """sha256 of the operations flattened as little-endian int32 (the issue's check)."""
    flat = [v for op in ops for v in op]
    return hashlib.sha256(struct.pack(f"<{len(flat)}i", *flat)).hexdigest()


def to_commands(ops, pair: str = PAIR) -> Iterator[Place | Cancel]:
    """Engine commands for the ops; the op index is the timestamp, user id = order id."""
    gtc, limit, market = TimeInForce.GTC, OrderKind.LIMIT, OrderKind.MARKET
    ioc, none = TimeInForce.IOC, STP.NONE
    for ts, (kind, oid, side, price, qty) in enumerate(ops):
        if kind == CANCEL:
            yield Cancel(pair, oid, oid, ts)
        elif kind == MARKET:
            yield Place(pair, oid, oid, side, market, ioc, 0, qty, 0, none, ts)
        else:
            # LIMIT and XLIMIT are both resting-capable limit orders (GTC).
            yield Place(pair, oid, oid, side, limit, gtc, price, qty, 0, none, ts)
