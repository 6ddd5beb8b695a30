"""keel.dlq for the sinks: undecodable records go there with their raw bytes and a reason,
and the sink moves on (bad input never stops a consumer)."""
from __future__ import annotations

import time

from confluent_kafka import Producer

from infra.kafka import producer_config
from infra.settings import Settings
from schemas.codec import Codec, CodecError


class DeadLetters:
    def __init__(self, settings: Settings, codec: Codec, consumer: str) -> None:
        self.topic = settings.topic("dlq")
        self.codec = codec
        self.consumer = consumer
        self.producer = Producer(producer_config(settings, client_id=f"{consumer}-dlq"))
        self.sent = 0
        self.pending = 0

    def send(self, msg, error: CodecError) -> None:
        self.send_raw(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), error)

    def send_raw(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, error: CodecError) -> None:
        record = {"source_topic": topic, "partition": partition, "offset": offset,
                  "key": key, "value": value, "reason": error.reason,
                  "error_code": int(error.code), "consumer": self.consumer,
                  "ts": int(time.time() * 1000)}
        self.producer.produce(self.topic, key=topic.encode(),
                              value=self.codec.encode("dead_letter", record))
        self.sent += 1
        self.pending += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Before the offsets move past a dead record, it must be on keel.dlq."""
        if self.producer.flush(timeout):
            raise RuntimeError(f"keel.dlq: records still unsent after {timeout}s")
        self.pending = 0
