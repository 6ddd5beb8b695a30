"""The engine consumer's fetch wait: short while live, long while catching up.

Why two: tansu 0.6 never wakes a fetch it holds when a record arrives, so a live engine
sees each order up to the whole wait late (at a low rate every order pays U(0, wait) on
this hop). But a short wait cannot read a partition of many small batches: tansu lists
them all for each fetch and answers nothing when the listing outlasts the wait (measured
on a private broker, 20,000 single-record batches: none read in 30 s at 5 ms, 15 s at
20 ms, 0.7 s at 100 ms). So the
process starts (recovery, a standby's catch-up) with the long wait, switches to the short
one once every partition is primary and at the end of its log, and back when one falls
behind for two checks in a row. The runner owns the consumer and makes the switch; this
only decides.

Neither wait is fixed for good: past ~8k batches tansu gives the 5 ms live wait nothing at
all from a partition, and a few orders behind never reach the 1,000-record rule. A
partition behind its end that does not move widens the waits (infra.fetchwait).
"""
from __future__ import annotations

from infra.fetchwait import Starving, widened

LIVE_LAG = 100          # records behind the high watermark that still count as live
CATCH_UP_LAG = 1000     # records behind that call for the long wait ...
CHECKS = 2              # ... seen on this many checks in a row


class FetchWait:
    def __init__(self, live_ms: int, catch_up_ms: int) -> None:
        self.live_ms = live_ms
        self.catch_up_ms = catch_up_ms
        self.switching = catch_up_ms > live_ms
        self.current = catch_up_ms if self.switching else live_ms
        self._behind = 0
        self._starving = Starving()

    def decide(self, all_primary: bool, lags: list[int | None],
               positions: list[int | None] | None = None) -> int | None:
        """The wait to switch to now, or None to keep the current one. `lags`: per
        partition, records between where the consumer resumes and the high watermark
        (None: not known yet, or not being read, e.g. paused); `positions`: per partition,
        where the consumer resumes."""
        if positions is not None and self._starving.check(lags, positions):
            return self._widen()
        if not self.switching:
            return None
        if self.current == self.catch_up_ms:
            if all_primary and lags and all(lag is not None and lag <= LIVE_LAG
                                            for lag in lags):
                return self.live_ms
            return None
        if any(lag is not None and lag > CATCH_UP_LAG for lag in lags):
            self._behind += 1
        else:
            self._behind = 0
        if self._behind >= CHECKS:
            self._behind = 0
            return self.catch_up_ms
        return None

    def _widen(self) -> int | None:
        waits = widened(self.live_ms, self.catch_up_ms, live_now=self.current < self.catch_up_ms)
        if waits is None:
            return None
        self.live_ms, self.catch_up_ms = waits
        self._behind = 0
        self.switching = self.catch_up_ms > self.live_ms
        return self.catch_up_ms
