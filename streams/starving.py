"""A worker's fetch wait widens when the broker starves its consumer (embedded tansu).

Faust reads through aiokafka with a 10 ms fetch wait (streams/compat.py). tansu lists every
batch of a partition for each fetch that finds data and answers nothing when the listing
outlasts the wait (README, the embedded broker's quirks): past ~15k batches (keel.requests
after some hours of low-rate trading, a table's changelog read back at a restart) the
worker would read nothing from that partition, forever. Once a second this looks at every
assigned partition that is neither paused nor at its end; when one has stood still for
STARVED_CHECKS looks (infra.fetchwait), the fetcher's wait doubles, up to
infra.fetchwait.MAX_WAIT_MS. It never narrows: the partition only grows. aiokafka reads
the wait afresh for every fetch request, so no client is rebuilt.

Inputs are read read_uncommitted (streams/app.py), so no open transaction can make a
partition stand still; a worker blocked for seconds (a broker outage) can, and only
widens a wait that costs latency on tansu alone (Apache Kafka answers a fetch as soon as
data is there).
"""
from __future__ import annotations

import logging

from infra.fetchwait import Starving, doubled
from infra.logs import event

log = logging.getLogger("keel.streams.starving")
CHECK_S = 1.0
STARVED_CHECKS = 5


def looks(consumer, active) -> tuple[list[int | None], list[int | None]]:
    """Per assigned partition (in a fixed order): records behind the last known high
    watermark (None: unknown, paused, or not one Faust reads now) and the position (None:
    not known yet). `active`: the (topic, partition)s Faust is reading — the changelogs
    while it recovers its tables, the inputs after. An active table's changelog stays
    assigned after recovery and grows with the worker's own writes, unread: without
    this it looked starved (a fresh `keel up` widened accounts to 2 s in 40 s)."""
    assignment = consumer._subscription.subscription
    assignment = assignment.assignment if assignment is not None else None
    if assignment is None:
        return [], []
    lags: list[int | None] = []
    positions: list[int | None] = []
    for tp in sorted(assignment.tps):
        state = assignment.state_value(tp)
        position = state.position if state.has_valid_position else None
        known = (position is not None and state.highwater is not None and not state.paused
                 and (tp.topic, tp.partition) in active)
        lags.append(max(0, state.highwater - position) if known else None)
        positions.append(position)
    return lags, positions


def widen(fetcher) -> int | None:
    """Double the fetcher's wait (None: already at the cap)."""
    wait = doubled(fetcher._fetch_max_wait_ms)
    if wait is not None:
        fetcher._fetch_max_wait_ms = wait
    return wait


def watch(app) -> None:
    """Install the once-a-second look on the Faust app (before the worker starts)."""
    starving = Starving(STARVED_CHECKS)

    @app.timer(CHECK_S)
    async def starved() -> None:
        consumer = getattr(app.consumer._thread, "_consumer", None)
        if consumer is None or consumer._fetcher is None:
            return
        active = {(tp.topic, tp.partition) for tp in app.consumer._get_active_partitions()}
        lags, positions = looks(consumer, active)
        if starving.check(lags, positions):
            wait = widen(consumer._fetcher)
            if wait is not None:
                event(log, "fetch wait widened: a partition behind its end is not moving",
                      logging.WARNING, wait_ms=wait, behind=sum(1 for n in lags if n))
