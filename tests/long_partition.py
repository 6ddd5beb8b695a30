"""A partition of many single-record batches, as a low-rate writer leaves one after hours
(the tests of readers that widen their fetch wait when tansu starves them)."""
from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer


def produce_one_per_batch(bootstrap: str, topic: str, values: Iterable[bytes],
                          partition: int = 0, key: bytes | None = None) -> None:
    """Every value its own batch (batch.num.messages 1, no linger), in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                         "batch.num.messages": 1, "enable.idempotence": True})
    for i, value in enumerate(values):
        producer.produce(topic, value, key, partition=partition)
        if i % 1000 == 0:
            producer.poll(0)
        while len(producer) > 2000:
            producer.poll(0.01)
    assert producer.flush(60) == 0
