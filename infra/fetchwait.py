"""Fetch waits that widen when the broker starves a reader (pure; the engine's consumer
and log reader, the gateway's feed, the streams workers and the sinks apply it).

tansu's memory engine lists every batch of a partition on each fetch that finds data and
answers nothing when that listing outlasts the fetch's wait (README, the embedded broker's
quirks): ~0.65 us a batch, so a 5 ms wait reads nothing from a partition past ~8k batches,
a 100 ms one past ~150k, fewer on a busy machine. Every partition only grows. A reader
that sees a partition behind its end not move (or crawl, below) for STARVED_CHECKS
checks in a row is starved: it widens its waits (the live one doubles, up to the catch-up wait; once the
catch-up wait itself starves, both double, up to MAX_WAIT_MS) and never narrows them.
On Apache Kafka a fetch with data there is answered whatever the wait: this never fires.
"""
from __future__ import annotations

STARVED_CHECKS = 2      # checks in a row a partition behind its end did not move at all
MAX_WAIT_MS = 2_000     # a listing this long is ~3M batches: widen no further
CRAWL = 100             # records a check that still count as standing still (see Starving)


class Starving:
    """Feed it each check's per-partition lags (records behind the end; None: unknown or
    not being read, e.g. paused) and positions, in a fixed order.

    A read_committed reader also stands still behind an open transaction (librdkafka's
    cached high watermark is the partition's end, not the last stable offset): measure its
    lags to infra.kafka.StableEnds, or an engine that died inside a transaction looks like
    a starving broker for as long as it is down."""

    def __init__(self, checks: int = STARVED_CHECKS, crawl: int = CRAWL) -> None:
        self.checks = checks
        # Moving no more than this many records a check, while further behind than that,
        # counts as standing still too: near the edge tansu answers a fetch now and then (a
        # 20 ms wait read ~20 records/s of a ~39k-batch partition), a reader that never
        # catches up and never stands still either. Every reader here goes through
        # thousands of records a second when it has them.
        self.crawl = crawl
        self._positions: list[int | None] = []
        self._still = 0

    def check(self, lags: list[int | None], positions: list[int | None]) -> bool:
        still = len(positions) == len(self._positions) and any(
            lag is not None and pos is not None and before is not None
            and (lag > 0 and pos == before or lag > self.crawl and 0 <= pos - before <= self.crawl)
            for lag, pos, before in zip(lags, positions, self._positions, strict=True))
        self._positions = list(positions)
        self._still = self._still + 1 if still else 0
        if self._still >= self.checks:
            self._still = 0
            return True
        return False


def doubled(wait_ms: int, factor: int = 2) -> int | None:
    """A single wait widened (`factor` times, up to MAX_WAIT_MS), or None at the cap."""
    return None if wait_ms >= MAX_WAIT_MS else min(wait_ms * factor, MAX_WAIT_MS)


def widened(live_ms: int, catch_up_ms: int, live_now: bool) -> tuple[int, int] | None:
    """(live, catch-up) waits after a starved check, or None at the cap. `live_now`: the
    starved reader was on its live wait (it should catch up on the long one now)."""
    if live_now and live_ms < catch_up_ms:
        return min(live_ms * 2, catch_up_ms), catch_up_ms
    wider = doubled(catch_up_ms)
    return None if wider is None else (wider, wider)
