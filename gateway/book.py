"""The gateway's local order book per pair, rebuilt from keel.depth snapshots and diffs.

The engine numbers depth messages with the pair's event seq: a diff covers seq
first..last and chains when first == previous last + 1. While the chain holds every level
here is exact, so a snapshot at the same id adds nothing; a gap makes the book unsynced
until the next snapshot replaces it. `last_update_id` is what REST /depth answers, on the
same id sequence as the WebSocket @depth diffs (U/u), so a client can stitch them.
"""
from __future__ import annotations

from heapq import nlargest, nsmallest


class LocalBook:
    __slots__ = ("pair", "bids", "asks", "last_update_id", "synced", "gaps")

    def __init__(self, pair: str) -> None:
        self.pair = pair
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.last_update_id = 0
        self.synced = False
        self.gaps = 0

    def apply(self, rec: dict) -> bool:
        """Apply one DepthUpdate record; True when the book changed position."""
        first, last = rec["first_update_id"], rec["last_update_id"]
        if rec["is_snapshot"]:
            if self.synced and last <= self.last_update_id:
                return False          # already exact at (or past) this id
            self.bids = {lv["price"]: lv["qty"] for lv in rec["bids"] if lv["qty"] > 0}
            self.asks = {lv["price"]: lv["qty"] for lv in rec["asks"] if lv["qty"] > 0}
            self.last_update_id = last
            self.synced = True
            return True
        if not self.synced or last <= self.last_update_id:
            return False
        if first != self.last_update_id + 1:
            self.synced = False       # a hole: wait for the next snapshot
            self.gaps += 1
            return False
        for side, levels in ((self.bids, rec["bids"]), (self.asks, rec["asks"])):
            for lv in levels:
                if lv["qty"] > 0:
                    side[lv["price"]] = lv["qty"]
                else:
                    side.pop(lv["price"], None)
        self.last_update_id = last
        return True

    def depth(self, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids best first, asks best first), at most `limit` levels each."""
        bids = nlargest(limit, self.bids.items())
        asks = nsmallest(limit, self.asks.items())
        return bids, asks

    def best(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        bid = max(self.bids.items()) if self.bids else None
        ask = min(self.asks.items()) if self.asks else None
        return bid, ask
