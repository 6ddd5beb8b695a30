"""Random access to committed topic data: ranges, tails and committed offsets.

The service reads its own past (snapshots, the tail of what it published, the group's
committed offset) with a separate, group-less read_committed consumer, so the main
consumer's position is never disturbed.

Its fetch wait starts short (a read that ends at the partition's end leaves a fetch held
there, and the next assignment's fetch queues behind it) and widens when a read gets
nothing for STALL_S: tansu lists the whole partition for every fetch that finds data and
answers nothing when the listing outlasts the wait (README, the embedded broker's quirks),
so at 10 ms a partition of ~30k batches (a depth partition after hours of low-rate
trading) could not be read at all and the engine could not restart.
"""
from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from infra.fetchwait import doubled
from infra.kafka import consumer_config
from infra.settings import Settings

TIMEOUT = 10.0
FIRST_WAIT_MS = 10
STALL_S = 1.0           # nothing read for this long while behind: widen the fetch wait


class LogReader:
    def __init__(self, settings: Settings, group_id: str, client_id: str = "keel-engine-reader"):
        self._config = (settings, group_id, client_id)
        self.wait_ms = FIRST_WAIT_MS
        self._consumer = self._make()

    def _make(self) -> Consumer:
        # group.id is the engine's, for committed(); this consumer never commits or joins.
        settings, group_id, client_id = self._config
        return Consumer(consumer_config(
            settings, group_id, client_id, enable_partition_eof=True,
            fetch_wait_max_ms=self.wait_ms, fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024))

    def _widen(self, at: TopicPartition) -> bool:
        """A consumer with a 5x longer fetch wait, assigned at `at`; False at the cap.
        (librdkafka fixes the wait when the client is made.)"""
        wider = doubled(self.wait_ms, factor=5)
        if wider is None:
            return False
        self.wait_ms = wider
        old, self._consumer = self._consumer, self._make()
        old.close()
        self._consumer.assign([at])
        return True

    def _stalled(self, topic: str, partition: int, quiet_since: float, resume: int) -> bool:
        """Nothing read since `quiet_since`: past STALL_S, widen and go on at `resume`
        (True: the caller's quiet clock starts again)."""
        if time.monotonic() - quiet_since < STALL_S:
            return False
        return self._widen(TopicPartition(topic, partition, resume))

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
            deadline = quiet_since = time.monotonic()
            deadline += TIMEOUT
            while time.monotonic() < deadline:
                msg = self._consumer.poll(0.5)
                if msg is None:
                    if self._stalled(topic, partition, quiet_since, max(low, listed - 1)):
                        quiet_since = time.monotonic()
                        deadline = quiet_since + TIMEOUT
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
        deadline = quiet_since = time.monotonic()
        deadline += timeout
        try:
            while time.monotonic() < deadline:
                done = False
                # consume(n, timeout) waits for all n; poll returns at the first record.
                first = self._consumer.poll(0.5)
                batch = [first] + self._consumer.consume(10_000, 0) if first is not None else []
                if batch:
                    quiet_since = time.monotonic()
                elif self._stalled(topic, partition, quiet_since,
                                   out[-1].offset() + 1 if out else start):
                    quiet_since = time.monotonic()
                    deadline = quiet_since + timeout
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
            resume = start
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
                    resume = msg.offset() + 1
                    yield msg
                if batch:
                    quiet_since = time.monotonic()
                    if self._consumer.position([tp])[0].offset >= end:
                        return
                elif self._stalled(topic, partition, quiet_since, resume):
                    quiet_since = time.monotonic()
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
