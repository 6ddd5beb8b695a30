"""Consumer lag per consumer group, read from Kafka itself: the committed offsets of
every group against the partitions' high watermarks. The Faust workers export no lag
gauge, so this is how `keel top` and the load report see every stage the same way
(engine, accounts, settlement, marketdata, sinks). Committed lag: a group that commits
every N ms shows up to N ms of records as lag, and on topics written in transactions each
commit marker takes an offset, so a caught-up partition can read 1."""
from __future__ import annotations

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from engine.service.heartbeat import is_liveness_group


class GroupLag:
    def __init__(self, bootstrap: str, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        # Only for watermarks: never subscribes, never commits.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keel-lag-probe",
                                  "enable.auto.commit": False})

    def measure(self) -> dict[str, int]:
        """group -> records behind, summed over its partitions; {} if Kafka did not answer."""
        try:
            groups = self.admin.list_consumer_groups(request_timeout=self.timeout).result()
            committed: dict[str, list[tuple[tuple[str, int], int]]] = {}
            for group in sorted(g.group_id for g in groups.valid):
                if group == "keel-lag-probe" or is_liveness_group(group):
                    continue        # ours, and the engine's beats (stamps, not positions)
                futures = self.admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(group)], request_timeout=self.timeout)
                committed[group] = [((tp.topic, tp.partition), tp.offset)
                                    for tp in futures[group].result().topic_partitions
                                    if tp.offset >= 0]    # < 0: nothing committed yet
            # One watermark per partition, however many groups read it (four read
            # keel.events): on tansu a ListOffsets lists every batch of the partition, so
            # asking once per group multiplied a cost that grows with uptime.
            highs = {key: self.consumer.get_watermark_offsets(
                         TopicPartition(*key), timeout=self.timeout)[1]
                     for key in sorted({key for rows in committed.values() for key, _ in rows})}
            return {group: sum(max(0, highs[key] - offset) for key, offset in rows)
                    for group, rows in committed.items()}
        except (KafkaException, RuntimeError, KeyError):
            return {}

    def close(self) -> None:
        self.consumer.close()
