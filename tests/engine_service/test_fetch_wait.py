"""engine.service.fetchwait: the long fetch wait until every partition is primary and at
the end of its log, the short one after, the long one again when a partition stays behind.
(Pure decisions; the switch itself runs in every engine test that starts a process: each
one goes live through it.)"""
from __future__ import annotations

from engine.service.fetchwait import CATCH_UP_LAG, LIVE_LAG, FetchWait


def test_starts_long_and_goes_short_once_live():
    fw = FetchWait(live_ms=20, catch_up_ms=100)
    assert fw.current == 100
    assert fw.decide(all_primary=False, lags=[0, 0]) is None         # a standby: stay
    assert fw.decide(all_primary=True, lags=[0, None]) is None       # not fetched yet
    assert fw.decide(all_primary=True, lags=[0, LIVE_LAG + 1]) is None
    assert fw.decide(all_primary=True, lags=[0, LIVE_LAG]) == 20


def test_goes_long_again_only_when_behind_twice_in_a_row():
    fw = FetchWait(live_ms=5, catch_up_ms=100)
    fw.current = 5
    behind = [0, CATCH_UP_LAG + 1]
    assert fw.decide(True, behind) is None
    assert fw.decide(True, [0, 0]) is None                            # caught up: reset
    assert fw.decide(True, behind) is None
    assert fw.decide(True, behind) == 100
    assert fw.decide(True, [0, CATCH_UP_LAG]) is None                 # at the bound: fine


def test_one_wait_never_switches():
    fw = FetchWait(live_ms=20, catch_up_ms=20)
    assert fw.current == 20
    assert fw.decide(True, [0]) is None
    assert fw.decide(True, [10 * CATCH_UP_LAG]) is None
    assert fw.decide(True, [10 * CATCH_UP_LAG]) is None
    assert FetchWait(live_ms=50, catch_up_ms=20).current == 50       # catch-up not longer
