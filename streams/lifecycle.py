"""What a streams worker tells at INFO (KEEL_LOG_LEVEL=INFO): the partitions it is given
and loses, and when its tables are recovered and it starts processing. Nothing at the
default WARNING. Without these a worker that never answered (a test's 120 s safety net,
ci40) left an empty log: no way to tell a rebalance that never finished from a recovery
that never ended or a batch that never came."""
from __future__ import annotations

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

    app.on_partitions_assigned.connect(assigned)
    app.on_partitions_revoked.connect(revoked)
    app.on_rebalance_complete.connect(recovered)
