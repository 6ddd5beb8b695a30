"""What a streams worker tells at INFO (KEEL_LOG_LEVEL=INFO): the partitions it is given
and loses, and when its tables are recovered and it starts processing. Nothing at the
default WARNING. Without these a worker that never answered (a test's 120 s safety net,
ci40) left an empty log: no way to tell a rebalance that never finished from a recovery
that never ended or a batch that never came."""
from __future__ import annotations

import asyncio
import logging

from infra.logs import event

log = logging.getLogger("streams.lifecycle")
_installed: set[int] = set()


def _named(tps) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)


def install(app, role: str) -> None:
    """Connect the app's rebalance signals to INFO events, once per app."""
    if id(app) in _installed:
        return
    _installed.add(id(app))

    async def assigned(sender, assigned, **_) -> None:
        event(log, "partitions assigned", role=role, partitions=_named(assigned))

    async def revoked(sender, revoked, **_) -> None:
        event(log, "partitions revoked", role=role, partitions=_named(revoked))

    async def recovered(sender, **_) -> None:
        tables = {name: len(table.data) for name, table in app.tables.items()}
        event(log, "tables recovered, processing", role=role, keys=tables)
        if log.isEnabledFor(logging.INFO):
            asyncio.get_running_loop().create_task(_consumer_state(app, role))

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
    app.on_rebalance_complete.connect(recovered)


async def _consumer_state(app, role: str, after_s: tuple[float, ...] = (2.0, 30.0)) -> None:
    """Where the consumer stands a little after recovery: whether its flow is on, which
    partitions are paused or held back, and how far it has read each. A worker that
    answers nothing shows here whether it fetches at all (ci40, ci44)."""
    waited = 0.0
    for at in after_s:
        await asyncio.sleep(at - waited)
        waited = at
        consumer = app.consumer
        try:
            read = {f"{tp.topic}[{tp.partition}]": offset
                    for tp, offset in consumer._read_offset.items()}
            event(log, "consumer state", role=role, after_s=at,
                  flow_active=consumer.flow_active,
                  paused=_named(consumer._paused_partitions),
                  buffered=_named(consumer._buffered_partitions),
                  active=_named(consumer._active_partitions or ()), read=read)
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            event(log, "consumer state unavailable", role=role, error=repr(exc))
