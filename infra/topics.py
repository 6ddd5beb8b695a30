"""Keel's topic catalog: the contract table of ARCHITECTURE.md, in code.

Partition counts come from configuration, never from a guess: pair-partitioned topics
have one partition per pair partition of the markets config; user-hashed topics have
`KEEL_USER_PARTITIONS`. Creation is idempotent; an existing topic with another partition
count is reported, never silently changed (moving a key's partition is an operator action).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from engine.markets import MarketsConfig
from infra.settings import Settings


class PartitionedBy(Enum):
    PAIR = "pair partition"        # markets config: one partition per pair group
    USER = "hash of key"           # KEEL_USER_PARTITIONS
    SINGLE = "single partition"


@dataclass(frozen=True)
class TopicSpec:
    short: str                     # 'orders' -> keel.orders
    key: str                       # what the record key is, for the describe table
    partitioned_by: PartitionedBy
    compacted: bool = False
    # None: the broker's default. The embedded tansu (memory engine) stores and ignores it,
    # and compaction too: its partitions keep every batch for the broker's life (see
    # infra/embedded/kafka.py).
    retention_ms: int | None = None


CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec("requests", "user id", PartitionedBy.USER),
    TopicSpec("replies", "request id", PartitionedBy.USER),
    TopicSpec("orders", "pair", PartitionedBy.PAIR),
    TopicSpec("events", "pair", PartitionedBy.PAIR),
    TopicSpec("depth", "pair", PartitionedBy.PAIR),
    TopicSpec("settlements", "user id", PartitionedBy.USER),
    TopicSpec("balances", "user id", PartitionedBy.USER, compacted=True),
    TopicSpec("tickers", "pair", PartitionedBy.PAIR),
    TopicSpec("candles", "pair", PartitionedBy.PAIR),
    # One snapshot partition per engine partition, so a starting engine reads only its own.
    TopicSpec("engine.snapshots", "engine partition", PartitionedBy.PAIR, compacted=True),
    # Primary liveness for the hot standby: beats are only worth their last second.
    TopicSpec("engine.heartbeats", "engine partition", PartitionedBy.PAIR, retention_ms=60_000),
    TopicSpec("dlq", "source topic", PartitionedBy.SINGLE),
)


@dataclass(frozen=True)
class PlannedTopic:
    name: str
    spec: TopicSpec
    partitions: int
    replication: int
    config: dict[str, str]


def plan(settings: Settings, markets: MarketsConfig) -> list[PlannedTopic]:
    """The full topic list with partition counts and configs for these settings."""
    if settings.user_partitions < 1:
        raise ValueError("KEEL_USER_PARTITIONS must be at least 1")
    if settings.replication_factor < 1:
        raise ValueError("KEEL_REPLICATION_FACTOR must be at least 1")
    counts = {PartitionedBy.PAIR: markets.partitions,
              PartitionedBy.USER: settings.user_partitions,
              PartitionedBy.SINGLE: 1}
    planned = []
    for spec in CATALOG:
        config = {"cleanup.policy": "compact" if spec.compacted else "delete"}
        if spec.retention_ms is not None:
            config["retention.ms"] = config["segment.ms"] = str(spec.retention_ms)
        if settings.replication_factor >= 3:
            # A write is acknowledged by two replicas, so one broker loss loses nothing.
            config["min.insync.replicas"] = "2"
        planned.append(PlannedTopic(settings.topic(spec.short), spec,
                                    counts[spec.partitioned_by],
                                    settings.replication_factor, config))
    return planned


@dataclass(frozen=True)
class TopicOutcome:
    name: str
    status: str                    # created | exists | mismatch | error
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("created", "exists")


def existing_partitions(admin, timeout: float = 10.0) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def ensure_topics(admin, planned: list[PlannedTopic], timeout: float = 10.0) -> list[TopicOutcome]:
    """Create what is missing; report what exists with a different partition count."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    have = existing_partitions(admin, timeout)
    outcomes: dict[str, TopicOutcome] = {}
    missing = []
    for topic in planned:
        if topic.name in have:
            outcomes[topic.name] = _compare(topic, have[topic.name])
        else:
            missing.append(topic)
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, t.partitions, t.replication, config=t.config) for t in missing],
            request_timeout=timeout)
        recheck = False
        for topic in missing:
            try:
                futures[topic.name].result(timeout)
                outcomes[topic.name] = TopicOutcome(topic.name, "created",
                                                    f"{topic.partitions} partitions")
            except Exception as exc:  # a KafkaException carrying a KafkaError
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                    recheck = True  # another creator won the race; compare below
                    outcomes[topic.name] = TopicOutcome(topic.name, "exists")
                else:
                    outcomes[topic.name] = TopicOutcome(topic.name, "error", str(exc))
        if recheck:
            have = existing_partitions(admin, timeout)
            for topic in missing:
                if outcomes[topic.name].status == "exists" and topic.name in have:
                    outcomes[topic.name] = _compare(topic, have[topic.name])
    return [outcomes[t.name] for t in planned]


def _compare(topic: PlannedTopic, actual: int) -> TopicOutcome:
    if actual == topic.partitions:
        return TopicOutcome(topic.name, "exists", f"{actual} partitions")
    return TopicOutcome(
        topic.name, "mismatch",
        f"has {actual} partitions but the config wants {topic.partitions} "
        f"({topic.spec.partitioned_by.value}); Keel does not repartition on its own")
