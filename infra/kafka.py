"""Client configs for confluent-kafka, built from Settings in one place.

Every Keel process gets its producer, consumer and admin settings here so that the
embedded broker and a production cluster differ only by `KEEL_KAFKA_BOOTSTRAP`.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from infra.settings import Settings

# librdkafka's own lines (a broker gone, a coordinator moved) go through this logger, so
# they come out as the process's JSON log lines at its level instead of raw "%3|...|FAIL|"
# text on stderr. They are handed over when the client is polled.
LIBRDKAFKA_LOGGER = logging.getLogger("kafka.librdkafka")


class StableEnds:
    """A consumer's statistics callback (`stats_cb=ends, statistics_interval_ms=...`)
    keeping each partition's last stable offset as its fetches last reported it.

    A read_committed reader cannot read past a transaction that is still open, so its end
    is the last stable offset, not the high watermark that `get_watermark_offsets`
    returns: behind an engine that died inside a transaction, lag against the high
    watermark shows a reader standing still behind its end (and the starvation rule,
    infra.fetchwait, would widen its fetch wait for good). On a partition with no open
    transaction the two are equal."""

    def __init__(self) -> None:
        self._ends: dict[tuple[str, int], int] = {}

    def options(self, every_s: float) -> dict[str, Any]:
        """The consumer settings that feed it statistics every `every_s` seconds."""
        return {"statistics.interval.ms": int(every_s * 1000), "stats_cb": self}

    def __call__(self, stats: str) -> None:
        for topic, info in json.loads(stats).get("topics", {}).items():
            for partition, part in info.get("partitions", {}).items():
                stable = part.get("ls_offset", -1)
                if stable >= 0 and int(partition) >= 0:       # -1: librdkafka's unassigned
                    self._ends[(topic, int(partition))] = stable

    def end(self, topic: str, partition: int, high: int) -> int:
        """The readable end: `high` (the cached high watermark), or the last stable offset
        when the statistics know it and it is lower."""
        stable = self._ends.get((topic, partition))
        return high if stable is None else min(high, stable)


def _base(settings: Settings, client_id: str | None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap,
                            "logger": LIBRDKAFKA_LOGGER}
    if client_id:
        conf["client.id"] = client_id
    return conf


def producer_config(settings: Settings, client_id: str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """An idempotent producer: acks from all in-sync replicas, no duplicates on retry.

    Pass `transactional_id=...` (underscores become dots) for a transactional producer.
    """
    conf = _base(settings, client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
    return conf | _dotted(overrides)


def consumer_config(settings: Settings, group_id: str | None, client_id: str | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """A read_committed consumer that commits explicitly (after the work is durable).

    `group_id=None` gives a group-less consumer (assign partitions yourself), as the
    gateway uses to see every pair.
    """
    session_ms = int(settings.extra.get("KEEL_KAFKA_SESSION_TIMEOUT_MS", 10_000))
    conf = _base(settings, client_id) | {
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # librdkafka's defaults make a group join slow on the embedded broker. A member
        # killed outright holds its partitions until this runs out: a restarted sink
        # waits ~session + 8 s for them (KEEL_KAFKA_SESSION_TIMEOUT_MS shortens it).
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": min(1_000, max(100, session_ms // 4)),
    }
    if group_id is not None:
        conf["group.id"] = group_id
    else:
        # librdkafka insists on a group.id even when partitions are assigned by hand.
        conf["group.id"] = f"keel-unassigned-{client_id or 'client'}"
    return conf | _dotted(overrides)


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return _base(settings, None) | _dotted(overrides)


def admin_client(settings: Settings, **overrides: Any):
    from confluent_kafka.admin import AdminClient

    return AdminClient(admin_config(settings, **overrides))


# confluent-kafka's Python-side keys keep their underscores.
_PYTHON_KEYS = {"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "on_commit",
                "logger", "log_level"}


def _dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """`linger_ms=0` -> `linger.ms=0`, so overrides read as Python keywords."""
    return {(k if k in _PYTHON_KEYS else k.replace("_", ".")): v for k, v in overrides.items()}
