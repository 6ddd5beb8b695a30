"""Primary liveness on keel.engine.heartbeats: a beat every ~100 ms per owned partition.

Beats are plain (non-transactional) records so they flow while a transaction is open.
Liveness is judged by when a beat *arrived here* (monotonic clock), so clock skew
between hosts never matters; only the start-up check compares a record's timestamp
with the wall clock, to tell a live primary from an old beat.
"""
from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from infra.kafka import consumer_config, producer_config
from infra.settings import Settings


class Heartbeats:
    def __init__(self, settings: Settings, topic: str, partitions: list[int],
                 clock=time.monotonic) -> None:
        self.topic = topic
        self.instance = uuid.uuid4().hex[:12]
        self.clock = clock
        self._producer = Producer(producer_config(
            settings, f"keel-engine-beat-{self.instance}", enable_idempotence=False, acks=1,
            linger_ms=0))
        self._consumer = Consumer(consumer_config(
            settings, None, f"keel-engine-watch-{self.instance}",
            isolation_level="read_uncommitted", fetch_wait_max_ms=20))
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
        now = clock()
        self.last_seen: dict[int, float] = dict.fromkeys(partitions, now)
        self.seen_from: dict[int, str] = {}
        self.other_at: dict[int, float] = dict.fromkeys(partitions, float("-inf"))
        self._beat_at = 0.0

    def close(self) -> None:
        self._producer.flush(0.5)      # a beat is worth nothing once we stop
        self._consumer.close()

    def beat(self, partitions: list[int], interval: float) -> None:
        now = self.clock()
        if partitions and now - self._beat_at >= interval:
            self._beat_at = now
            for p in partitions:
                value = json.dumps({"instance": self.instance, "partition": p,
                                    "ts": int(time.time() * 1000)}).encode()
                try:
                    self._producer.produce(self.topic, value, str(p).encode(), partition=p)
                except BufferError:
                    pass        # broker unreachable for a while; the next beat retries
        self._producer.poll(0)

    def watch(self) -> None:
        """Note beats from other instances that arrived since the last call."""
        for msg in self._consumer.consume(1000, 0):
            if msg.error() is not None:
                continue
            try:
                beat = json.loads(msg.value())
                instance = beat["instance"]
            except (ValueError, KeyError, TypeError):
                continue
            if instance != self.instance:
                self.last_seen[msg.partition()] = self.other_at[msg.partition()] = self.clock()
                self.seen_from[msg.partition()] = instance

    def silent_for(self, partition: int) -> float:
        return self.clock() - self.last_seen[partition]

    def other_live(self, partition: int, within: float) -> bool:
        """Another instance beat for `partition` within the last `within` seconds."""
        return self.clock() - self.other_at[partition] < within

    def mark_alive(self, partition: int) -> None:
        """Give a partition's primary the full grace period from now."""
        self.last_seen[partition] = self.clock()


def live_primary(reader, topic: str, partition: int, within_s: float) -> bool:
    """True when the partition's last beat was written within `within_s` (wall clock)."""
    msg = reader.last(topic, partition)
    if msg is None:
        return False
    _, ts = msg.timestamp()
    return ts > 0 and time.time() * 1000 - ts <= within_s * 1000


def ensure_heartbeat_topic(settings: Settings, topic: str, partitions: int) -> None:
    """Create the beat topic when missing (one partition per engine partition)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    from infra.kafka import admin_client

    admin = admin_client(settings)
    if topic in admin.list_topics(timeout=10).topics:
        return
    # Beats are only worth their last second: keep a minute, in small segments.
    config = {"cleanup.policy": "delete", "retention.ms": "60000", "segment.ms": "60000"}
    future = admin.create_topics([NewTopic(topic, partitions, settings.replication_factor,
                                           config=config)])[topic]
    try:
        future.result(10)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
