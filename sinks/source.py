"""The sinks' Kafka side: a read_committed group consumer that hands out batches, commits
offsets only when told (after the store's commit) and can hold its position while the
store is away (partitions paused, the group membership kept alive by polling).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from operator import methodcaller

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from infra.kafka import consumer_config
from infra.logs import event
from infra.settings import Settings

log = logging.getLogger(__name__)

# Message accessors to map over a whole batch: the loop runs in C, no Python frame a
# record (a batch is tens of thousands of them).
TOPIC, PARTITION, OFFSET, VALUE, _ERROR = (
    methodcaller(n) for n in ("topic", "partition", "offset", "value", "error"))

# Errors a consumer reports while the broker or a topic is not there yet: keep polling.
_QUIET = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART,
          KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}


def ends_of(msgs: list, topics: list[str], partitions: np.ndarray) -> dict[tuple[str, int], int]:
    """Source.ends() of `msgs` whose topics and partitions were read already (a store's
    prepare reads them anyway)."""
    # A batch comes in long runs of one partition: only each run's last message is
    # asked for its offset (a (topic, partition) key per message cost ~0.36 us).
    n = len(msgs)
    cuts = [0, *(np.flatnonzero(partitions[1:] != partitions[:-1]) + 1).tolist(), n]
    out: dict[tuple[str, int], int] = {}
    for a, b in zip(cuts, cuts[1:], strict=False):
        if b - a and topics[a:b].count(topics[a]) == b - a:
            out[(topics[a], int(partitions[b - 1]))] = msgs[b - 1].offset()
        else:                              # topics mixed within the run: one by one
            for m in msgs[a:b]:
                out[(m.topic(), m.partition())] = m.offset()
    return out


class Source:
    def __init__(self, settings: Settings, group: str, topics: list[str], client_id: str,
                 max_records: int = 5000, poll_timeout: float = 0.1,
                 on_assign: Callable[[Consumer, list[TopicPartition]], None] | None = None,
                 eager: bool = False, linger: float | None = None, **overrides) -> None:
        conf = consumer_config(settings, group, client_id,
                               # An outage of the store may outlast librdkafka's default;
                               # the loop still polls while it waits (see hold()).
                               max_poll_interval_ms=600_000,
                               fetch_max_bytes=64 << 20,
                               # librdkafka asks for 1 MB a partition per fetch by
                               # default, and tansu 0.6 answers only after the whole
                               # fetch wait (below): ~20 MB/s a partition, ~150k depth
                               # records/s over two once the prefetched part was read.
                               max_partition_fetch_bytes=16 << 20,
                               queued_max_messages_kbytes=256 << 10,
                               # A partition whose local queue is full is fetched again
                               # this much later (librdkafka's default: 1 s). With a
                               # backlog the loop empties one partition while the other
                               # waits out that second with nothing queued: ~0.7 s of
                               # idle per 280k records (210k/s consumed, 710k/s at 10 ms).
                               fetch_queue_backoff_ms=10,
                               # tansu 0.6 holds a fetch for the whole wait even when
                               # records are there: at librdkafka's 500 ms, 5k events/s
                               # reached PostgreSQL in 225 ms (p50); 53 ms at 50 ms.
                               fetch_wait_max_ms=50,
                               # Topics created after we subscribed are found in seconds.
                               topic_metadata_refresh_interval_ms=5000,
                               log_level=3, **overrides)
        self.consumer = Consumer(conf)
        self.topics = topics
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        # Not eager, after a poll that came back short (a trickle, not a backlog): wait up
        # to this long for a whole batch instead (None: poll_timeout always).
        self.linger = linger
        self._short = False
        self.eager = eager                 # return what is queued rather than wait for more
        self.generation = 0          # rises on every revocation: older batches are stale
        self._on_assign = on_assign
        self.consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        event(log, "partitions assigned", logging.INFO,
              partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self._on_assign is not None:
            self._on_assign(consumer, partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.generation += 1
        event(log, "partitions revoked", logging.INFO,
              partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def poll(self, timeout: float | None = None) -> list:
        """Up to max_records messages, in partition order; errors are logged, not returned."""
        # Eager: what is queued now, at once; with nothing queued, wait for the first
        # record (up to the timeout) and take what came with it. Waiting for a whole
        # batch while some lay ready cost every tail of a backlog, and every record at a
        # steady rate, the full timeout. Not eager: a whole batch or the timeout, for a
        # store that wants few large inserts (ClickHouse).
        wait = self.poll_timeout if timeout is None else timeout
        if timeout is None and self._short and self.linger is not None and not self.eager:
            wait = self.linger
        # The caller (SinkLoop._take) keeps the collector off while the batch's Message
        # objects live: 20k of them set off ~30 collections otherwise.
        msgs = self._consume(wait)
        self._short = len(msgs) < self.max_records
        if not any(map(_ERROR, msgs)):
            return msgs
        bad = [m for m in msgs if m.error() is not None]
        for m in bad:
            if m.error().code() not in _QUIET:
                event(log, "consumer error", logging.WARNING, error=str(m.error()))
        return [m for m in msgs if m.error() is None]

    def _consume(self, wait: float) -> list:
        if self.eager:
            msgs = self.consumer.consume(self.max_records, 0)
            if not msgs:                   # the first record ends the wait, not the batch
                msgs = self.consumer.consume(1, wait)
                if msgs:
                    msgs += self.consumer.consume(self.max_records - 1, 0)
            return msgs
        return self.consumer.consume(self.max_records, wait)

    @staticmethod
    def ends(msgs: list) -> dict[tuple[str, int], int]:
        """(topic, partition) -> offset of the last of `msgs` there."""
        return ends_of(msgs, list(map(TOPIC, msgs)),
                       np.fromiter(map(PARTITION, msgs), np.int64, len(msgs)))

    def hold(self, seconds: float) -> None:
        """Wait without taking new records: the group still sees us alive."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        try:
            for m in self.consumer.consume(self.max_records, seconds):
                # Paused partitions deliver nothing; anything here was fetched before
                # the pause and is read again after the seek below.
                if m.error() is None:
                    self.consumer.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
                    break
        finally:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.resume(assignment)

    def commit(self, msgs: list | dict[tuple[str, int], int]) -> bool:
        """Commit the offsets after `msgs` (or after the last offsets `ends()` gave),
        synchronously. False when the group moved on."""
        last = msgs if isinstance(msgs, dict) else self.ends(msgs)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        if not offsets:
            return True
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            # A rebalance took the partitions: the new owner replays from the last
            # commit and the store drops what it already has.
            event(log, "offset commit failed", logging.WARNING, error=str(exc))
            return False

    def lag(self, ask_broker: bool = False) -> dict[tuple[str, int], int]:
        """(topic, partition) -> high watermark - position, for the assigned partitions.

        The high watermark normally comes from the last fetch response (free: librdkafka
        keeps it). Asking the broker costs a round trip per partition (about 0.25 s each
        on tansu 0.6), which a loop that refreshes every second cannot pay on its hot
        path; it is asked only when told (while the partitions are paused for an outage
        nothing is fetched, so the cached mark would stand still) or when nothing was
        fetched yet. A broker answer below our own position is impossible (tansu 0.6
        answers ListOffsets with a wrong end offset sometimes) and is not used. A
        partition with no usable mark is left out.
        """
        out = {}
        assignment = self.consumer.assignment()
        if not assignment:
            return out
        for tp in self.consumer.position(assignment):
            if tp.offset < 0:
                continue
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if ask_broker or high < 0:
                try:
                    _, asked = self.consumer.get_watermark_offsets(tp, timeout=0.5,
                                                                   cached=False)
                except KafkaException:
                    asked = -1
                if asked >= tp.offset:
                    high = asked
            if high < 0:
                continue
            out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def close(self) -> None:
        self.consumer.close()
