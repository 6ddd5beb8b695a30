"""infra.fetchwait: when a reader counts as starved, and how far its waits widen (pure)."""
from __future__ import annotations

from infra.fetchwait import MAX_WAIT_MS, Starving, doubled, widened


def test_starved_only_behind_and_standing_still_for_the_checks_asked():
    s = Starving(checks=3)
    assert not s.check([4, 0], [10, 7])             # first look
    assert not s.check([4, 0], [10, 7])             # still once
    assert not s.check([4, 0], [10, 7])             # twice
    assert s.check([4, 0], [10, 7])                 # three times: starved
    assert not s.check([4, 0], [10, 7])             # counted afresh after
    moving, at_end, unknown = Starving(1), Starving(1), Starving(1)
    for i in range(5):
        assert not moving.check([4], [10 + i])
        assert not at_end.check([0], [10])
        assert not unknown.check([None], [10])


def test_crawling_far_behind_counts_as_standing_still():
    s = Starving(checks=2, crawl=100)
    assert not s.check([38_000], [10])
    assert not s.check([37_980], [30])              # 20 records a check: crawling
    assert s.check([37_960], [50])
    near, quick = Starving(1, crawl=100), Starving(1, crawl=100)
    near.check([50], [10])
    assert not near.check([50], [40])               # moving, and near the end
    assert near.check([50], [40])                   # a few behind and still: as ever
    quick.check([38_000], [10])
    assert not quick.check([37_000], [1_010])       # reading


def test_widening_doubles_live_up_to_catch_up_then_both_up_to_the_cap():
    assert widened(5, 100, live_now=True) == (10, 100)
    assert widened(80, 100, live_now=True) == (100, 100)
    assert widened(5, 100, live_now=False) == (200, 200)
    assert widened(100, 100, live_now=True) == (200, 200)
    assert widened(1500, 1500, live_now=False) == (MAX_WAIT_MS, MAX_WAIT_MS)
    assert widened(MAX_WAIT_MS, MAX_WAIT_MS, live_now=False) is None


def test_a_single_wait_doubles_or_grows_by_its_factor_up_to_the_cap():
    assert doubled(10) == 20
    assert doubled(10, factor=5) == 50
    assert doubled(1_500) == MAX_WAIT_MS
    assert doubled(MAX_WAIT_MS) is None
