"""Dropping a Place that keel.orders delivers twice, before it reaches a book.

A command can arrive twice on keel.orders: the embedded broker shows read_committed
readers the records of aborted or fenced transactions, and accounts re-derives the
Places of a transaction it lost in a crash. Executing a Place twice would trade twice
(or, while the first copy rests, be rejected as DUPLICATE_ORDER_ID, which settlement
reads as "release this order's hold").

accounts numbers orders `n * ORDER_ID_STRIDE + p` (streams/ledger.py), with `n` a counter
of accounts partition `p` that only rises, and forwards them in counter order. So on any
keel.orders partition the Places from one accounts partition arrive with strictly rising
ids, and a Place whose id is not above the highest one already seen from its partition
(`order_id % ORDER_ID_STRIDE`, its residue) is a copy.

The rule applies to ids as they come, whoever wrote them: per residue, only a rising
id is executed. Writers that number orders 1, 2, 3... (tests, benchmarks, the standard
workload) rise in every residue and pass untouched; a writer that reuses or lowers an id
within a residue has that Place dropped. Only Places are filtered: Cancel, Amend,
CancelAll and SetTrading carry no rising number and go to the book as they are.

The high-water map is engine state: it travels in the partition's snapshot
(engine.service.snapshots.pack_state) so that recovery, a standby and `keel replay`
drop exactly the same records as the live engine did.
"""
from __future__ import annotations

from engine.domain import Place

# Must equal streams.ledger.ORDER_ID_STRIDE (tests/engine_service/test_duplicates.py pins
# it); the engine may not import streams, whose code depends on the engine.
ORDER_ID_STRIDE = 4096


class PlaceFilter:
    """Per residue (accounts partition) the highest Place order id already executed."""

    __slots__ = ("high", "dropped")

    def __init__(self, high: dict[int, int] | None = None) -> None:
        self.high: dict[int, int] = dict(high or {})
        self.dropped = 0            # copies dropped since this filter was built

    def fresh(self, cmd) -> bool:
        """True if `cmd` must be executed (and, for a Place, remember its id)."""
        if type(cmd) is not Place:
            return True
        oid = cmd.order_id
        residue = oid % ORDER_ID_STRIDE
        last = self.high.get(residue)
        if last is not None and oid <= last:
            self.dropped += 1
            return False
        self.high[residue] = oid
        return True

    def items(self) -> list[tuple[int, int]]:
        """(residue, highest id) sorted by residue: the snapshot's canonical order."""
        return sorted(self.high.items())
