"""The engine service's knobs: topics, group, batching, snapshot and liveness intervals.

Read once from Settings (KEEL_ENGINE_* variables in `settings.extra`), so tests and the
bench tune them through the environment like an operator would.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from infra.settings import Settings


def _stem(topic_prefix: str) -> str:
    return topic_prefix.rstrip(".") or "keel"


def group_id(topic_prefix: str = "keel.") -> str:
    """The engine's consumer group ("keel-engine"): its committed offsets are the truth.
    Named after the topic prefix, so deployments sharing a cluster never mix."""
    return f"{_stem(topic_prefix)}-engine"


def transactional_id(partition: int, topic_prefix: str = "keel.") -> str:
    """One transactional.id per engine partition ("keel-engine-0"): whoever starts it
    fences the last writer."""
    return f"{_stem(topic_prefix)}-engine-{partition}"


def _num(extra: dict[str, str], name: str, default: float, cast=int):
    raw = extra.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class EngineOptions:
    orders_topic: str
    events_topic: str
    depth_topic: str
    snapshots_topic: str
    heartbeats_topic: str
    dlq_topic: str
    group_id: str = "keel-engine"
    max_batch: int = 5000               # records per transaction at most
    max_batch_ms: float = 1.0           # how long a batch may wait to fill after its first
                                        # record, when more is already at the broker
    snapshot_every: int = 200_000       # input records between engine snapshots
    snapshot_every_s: float = 60.0      # ... or seconds, whichever comes first
    chunk_bytes: int = 512 * 1024       # snapshot chunk size (under any broker's 1 MB default)
    depth_levels: int = 20              # levels per side in a full depth snapshot
    depth_snapshot_every: int = 100     # diffs of a pair between full depth snapshots
    depth_snapshot_s: float = 5.0       # ... or seconds
    heartbeat_s: float = 0.1            # primary liveness beat
    takeover_s: float = 1.0             # silence after which a standby takes over
    committed_poll_s: float = 0.1       # how often a standby reads the primary's offset
    impl: str = "auto"                  # engine implementation: auto | c | python
    linger_ms: float = 0                # producer linger inside a transaction
    # The live fetch wait. tansu 0.6 never wakes a fetch it holds when a record arrives, so
    # at a low rate each order waits U(0, this) for it (engine alone, 60 orders/s over three
    # partitions, send -> commit p50/p90: 6.6/10.1 and 8.8/46 ms at 5 against 10.7/19.7 and
    # 19.9/147 at 20, machine load 11-12). A short wait cannot read a backlog of small
    # batches (tansu answers with what it assembled when the wait runs out: 0 records in
    # 20 s at 2 or 5 ms, load ~20), so recovery and any partition over 1,000 records behind
    # use catch_up_wait_ms instead (engine.service.fetchwait). The price of 5 against 20: an
    # idle 3-partition engine costs tansu ~8.5% of a core instead of ~5%.
    fetch_wait_ms: int = 5
    # The wait while recovering or behind (engine.service.fetchwait): 20,000 single-record
    # batches read in ~0.7 s at 100 ms, ~15 s at 20 ms. At or below fetch_wait_ms: one wait.
    catch_up_wait_ms: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        x = settings.extra
        return cls(
            orders_topic=settings.topic("orders"),
            events_topic=settings.topic("events"),
            depth_topic=settings.topic("depth"),
            snapshots_topic=settings.topic("engine.snapshots"),
            heartbeats_topic=settings.topic("engine.heartbeats"),
            dlq_topic=settings.topic("dlq"),
            group_id=group_id(settings.topic_prefix),
            max_batch=_num(x, "KEEL_ENGINE_MAX_BATCH", 5000),
            max_batch_ms=_num(x, "KEEL_ENGINE_MAX_BATCH_MS", 1.0, float),
            snapshot_every=_num(x, "KEEL_ENGINE_SNAPSHOT_EVERY", 200_000),
            snapshot_every_s=_num(x, "KEEL_ENGINE_SNAPSHOT_EVERY_S", 60.0, float),
            chunk_bytes=_num(x, "KEEL_ENGINE_SNAPSHOT_CHUNK_BYTES", 512 * 1024),
            depth_levels=_num(x, "KEEL_ENGINE_DEPTH_LEVELS", 20),
            depth_snapshot_every=_num(x, "KEEL_ENGINE_DEPTH_SNAPSHOT_EVERY", 100),
            depth_snapshot_s=_num(x, "KEEL_ENGINE_DEPTH_SNAPSHOT_S", 5.0, float),
            heartbeat_s=_num(x, "KEEL_ENGINE_HEARTBEAT_MS", 100, float) / 1000,
            takeover_s=_num(x, "KEEL_ENGINE_TAKEOVER_MS", 1000, float) / 1000,
            impl=x.get("KEEL_ENGINE_IMPL", "auto") or "auto",
            linger_ms=_num(x, "KEEL_ENGINE_LINGER_MS", 0, float),
            fetch_wait_ms=_num(x, "KEEL_ENGINE_FETCH_WAIT_MS", 5),
            catch_up_wait_ms=_num(x, "KEEL_ENGINE_CATCH_UP_WAIT_MS", 100),
        )

    def with_(self, **changes) -> EngineOptions:
        return replace(self, **changes)
