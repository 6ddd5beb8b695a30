"""The depth feed: per batch, one diff per pair whose seq moved, and now and then a full book.

Update ids are the pair's event seq. A diff covering the events with seq a..b carries
first_update_id=a, last_update_id=b and every level that changed (its quantity now, 0 =
gone), so consecutive diffs chain (next first = previous last + 1) and every seq is
covered exactly once. Pure: the caller passes the monotonic time used to pace snapshots.
"""
from __future__ import annotations

from collections.abc import Iterable

BID = 0


def _levels(pairs: Iterable[tuple[int, int]]) -> list[dict]:
    return [{"price": price, "qty": qty} for price, qty in pairs]


class DepthFeed:
    def __init__(self, pairs: Iterable[str], levels: int = 20, snapshot_every: int = 100,
                 snapshot_s: float = 5.0) -> None:
        self.levels = levels
        self.snapshot_every = snapshot_every
        self.snapshot_s = snapshot_s
        self._next_first = {pair: 1 for pair in pairs}
        self._diffs = dict.fromkeys(self._next_first, 0)
        self._snapshot_at = dict.fromkeys(self._next_first, float("-inf"))

    def next_first(self, pair: str) -> int:
        return self._next_first[pair]

    def resume(self, pair: str, next_first: int) -> None:
        """Continue the chain at `next_first` (after recovery: the last published id + 1)."""
        self._next_first[pair] = next_first

    def discard(self, book) -> None:
        """Forget level changes and chain position: the book's seq is already published."""
        book.take_level_changes()
        self._next_first[book.pair] = book.seq + 1

    def updates(self, book, ts: int, now: float) -> list[dict]:
        """DepthUpdate records for `book` since the last call: a diff if its seq moved,
        then a full snapshot when one is due."""
        pair, seq = book.pair, book.seq
        first = self._next_first[pair]
        if seq < first:
            return []
        bids, asks = [], []
        for side, price, qty in book.take_level_changes():
            (bids if side == BID else asks).append((price, qty))
        bids.reverse()          # changes come sorted by price ascending; bids go best first
        out = [{"pair": pair, "first_update_id": first, "last_update_id": seq, "ts": ts,
                "is_snapshot": False, "bids": _levels(bids), "asks": _levels(asks)}]
        self._next_first[pair] = seq + 1
        self._diffs[pair] += 1
        if (self._diffs[pair] >= self.snapshot_every
                or now - self._snapshot_at[pair] >= self.snapshot_s):
            out.append(self.snapshot(book, ts, now))
        return out

    def snapshot(self, book, ts: int, now: float) -> dict:
        bids, asks = book.depth(self.levels)
        self._diffs[book.pair] = 0
        self._snapshot_at[book.pair] = now
        return {"pair": book.pair, "first_update_id": book.seq, "last_update_id": book.seq,
                "ts": ts, "is_snapshot": True, "bids": _levels(bids), "asks": _levels(asks)}
