"""engine.service.fetchwait: the long fetch wait until every partition is primary and at
the end of its log, the short one after, the long one again when a partition stays behind.
(Pure decisions; the switch itself runs in every engine test that starts a process: each
one goes live through it.)"""
from __future__ import annotations

from engine.service.fetchwait import CATCH_UP_LAG, LIVE_LAG, FetchWait
from infra.fetchwait import MAX_WAIT_MS


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


def test_a_live_partition_behind_and_not_moving_widens_the_waits():
    fw = FetchWait(live_ms=5, catch_up_ms=100)
    fw.current = 5
    assert fw.decide(True, [0, 3], positions=[10, 50]) is None       # first look
    assert fw.decide(True, [0, 3], positions=[12, 50]) is None       # p1 still once
    assert fw.decide(True, [0, 3], positions=[14, 50]) == 100        # twice: go long
    assert (fw.live_ms, fw.catch_up_ms) == (10, 100)
    fw.current = 100
    assert fw.decide(True, [0, 0], positions=[14, 53]) == 10         # caught up: live, wider


def test_a_stuck_partition_at_its_end_or_moving_is_not_starving():
    fw = FetchWait(live_ms=5, catch_up_ms=100)
    fw.current = 5
    for _ in range(5):
        assert fw.decide(True, [0, None], positions=[7, 9]) is None  # at its end / paused
    for i in range(5):
        assert fw.decide(True, [50, 50], positions=[7 + i, 9 + i]) is None   # moving


def test_the_long_wait_starving_widens_both_up_to_the_cap():
    fw = FetchWait(live_ms=5, catch_up_ms=100)               # starts long
    widened = []
    for _ in range(20):
        wait = fw.decide(False, [5], positions=[0])
        if wait is not None:
            fw.current = wait
            widened.append(wait)
    assert widened == [200, 400, 800, 1600, MAX_WAIT_MS]
    assert fw.live_ms == fw.catch_up_ms == MAX_WAIT_MS
