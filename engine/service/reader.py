"""Random access to committed topic data: ranges, tails and committed offsets.

The service reads its own past (snapshots, the tail of what it published, the group's
committed offset) with a separate, group-less read_committed consumer, so the main
consumer's position is never disturbed.
"""
from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from infra.kafka import consumer_config
from infra.settings import Settings

TIMEOUT = 10.0


class LogReader:
    def __init__(self, settings: Settings, group_id: str, client_id: str = "keel-engine-reader"):
        # group.id is the engine's, for committed(); this consumer never commits or joins.
        self._consumer = Consumer(consumer_config(
            settings, group_id, client_id, enable_partition_eof=True, fetch_wait_max_ms=10,
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024))

    def close(self) -> None:
        self._consumer.close()

    def committed(self, topic: str, partition: int) -> int:
        """The group's committed offset (0 when nothing was committed yet)."""
        [tp] = self._consumer.committed([TopicPartition(topic, partition)], timeout=TIMEOUT)
        if tp.error is not None:
            raise KafkaException(tp.error)
        return max(tp.offset, 0)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high) of the partition.

        The listed high watermark is not trusted: tansu answers ListOffsets(latest) with
        the last batch's base offset + 1. A fetch of that last batch reports the true
        high watermark, so the end is confirmed by reading it.
        """
        tp = TopicPartition(topic, partition)
        low, listed = self._consumer.get_watermark_offsets(tp, timeout=TIMEOUT, cached=False)
        if listed <= low:
            return low, listed
        self._consumer.assign([TopicPartition(topic, partition, max(low, listed - 1))])
        try:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                msg = self._consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                if err is not None or self._consumer.position([tp])[0].offset >= listed:
                    _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                    if high >= listed:
                        return low, high
            raise TimeoutError(f"{topic}[{partition}]: no fetch response for the high watermark")
        finally:
            self._consumer.unassign()

    def read(self, topic: str, partition: int, start: int, end: int | None = None,
             timeout: float = TIMEOUT) -> list:
        """Committed records with start <= offset < end (end None: up to the current end)."""
        low, high = self.watermarks(topic, partition)
        end = high if end is None else min(end, high)
        start = max(start, low)
        if start >= end:
            return []
        self._consumer.assign([TopicPartition(topic, partition, start)])
        out = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                done = False
                # consume(n, timeout) waits for all n; poll returns at the first record.
                first = self._consumer.poll(0.5)
                batch = [first] + self._consumer.consume(10_000, 0) if first is not None else []
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            break
                        raise KafkaException(err)
                    if msg.offset() >= end:
                        done = True
                        break
                    out.append(msg)
                    if msg.offset() == end - 1:
                        done = True
                        break
                if not done and batch:
                    # The last offsets may be transaction markers, never delivered.
                    [pos] = self._consumer.position([TopicPartition(topic, partition)])
                    done = pos.offset >= end
                if done:
                    return out
            raise TimeoutError(f"reading {topic}[{partition}] {start}..{end} timed out")
        finally:
            self._consumer.unassign()

    def stream(self, topic: str, partition: int, start: int, end: int | None = None,
               idle_timeout: float = TIMEOUT):
        """Yield committed records with start <= offset < end, without holding them all."""
        low, high = self.watermarks(topic, partition)
        end = high if end is None else min(end, high)
        start = max(start, low)
        if start >= end:
            return
        tp = TopicPartition(topic, partition)
        self._consumer.assign([TopicPartition(topic, partition, start)])
        try:
            quiet_since = time.monotonic()
            while True:
                first = self._consumer.poll(0.5)
                batch = [first] + self._consumer.consume(10_000, 0) if first is not None else []
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            return
                        raise KafkaException(err)
                    if msg.offset() >= end:
                        return
                    yield msg
                if batch:
                    quiet_since = time.monotonic()
                    if self._consumer.position([tp])[0].offset >= end:
                        return
                elif time.monotonic() - quiet_since > idle_timeout:
                    raise TimeoutError(f"reading {topic}[{partition}] stalled before {end}")
        finally:
            self._consumer.unassign()

    def tail(self, topic: str, partition: int, count: int) -> list:
        """At least the last `count` committed records (fewer if the log is shorter).

        Offsets also hold transaction markers and aborted records, so the window widens
        until it has enough or reaches the start of the log.
        """
        low, high = self.watermarks(topic, partition)
        window = max(count * 2, 16)
        while True:
            start = max(low, high - window)
            records = self.read(topic, partition, start, high)
            if len(records) >= count or start == low:
                return records
            window *= 4

    def last(self, topic: str, partition: int):
        records = self.tail(topic, partition, 1)
        return records[-1] if records else None
