"""A batch's output records, sent by librdkafka (confluent-kafka) instead of Faust's producer.

Why: profiled on the accounts worker (bench/streams.py, py-spy), Faust's `Topic.send`
through aiokafka cost ~200 us of Python per output record (a FutureMessage, a future and
callbacks per record, batches built and framed in Python) — about half the worker's CPU.
`Producer.produce` hands the record to librdkafka's C queue in ~2 us; librdkafka batches
and sends from its own thread.

Faust stays in charge of consuming, the tables and their changelogs; only the records a
batch emits go this way. The crash-safety order is unchanged: `flush` returns once every
queued record is acknowledged by all in-sync replicas (acks=all), a delivery failure
raises (so the batch's offsets are never committed), and run_batches commits only after.
The producer is idempotent: its retries neither reorder nor duplicate a partition's
records. A copy written again after a crash is dropped downstream (the engine by
keel-source, the gateway by request id, accounts by `(pair, seq)`).

A record without an explicit partition (keel.replies) is placed by murmur2 of its key,
the partitioner Faust's aiokafka producer used, so readers see the same placement.
"""
from __future__ import annotations

import asyncio

from confluent_kafka import KafkaException, Producer

from infra.kafka import LIBRDKAFKA_LOGGER

FLUSH_TIMEOUT_S = 60.0


class Outputs:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        self.errors: list = []
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "client.id": client_id, "logger": LIBRDKAFKA_LOGGER,
            "enable.idempotence": True, "acks": "all",
            # flush() sends at once whatever lingers; the linger only groups a batch's
            # records into fewer requests while it is being produced.
            "linger.ms": 2,
            "socket.nagle.disable": True,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
        })

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def produce(self, topic: str, key: bytes | None, value: bytes, partition: int | None,
                headers) -> None:
        produce = self.producer.produce
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, headers=headers)
                else:
                    produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:           # librdkafka's queue is full: let it drain
                self.producer.poll(0.01)

    async def flush(self) -> None:
        """Wait until every produced record is acknowledged; raise if any failed."""
        left = await asyncio.get_running_loop().run_in_executor(
            None, self.producer.flush, FLUSH_TIMEOUT_S)
        if self.errors or left:
            errors, self.errors = self.errors, []
            raise KafkaException(f"outputs not delivered ({left} still queued): "
                                 f"{'; '.join(errors[:5])}")
