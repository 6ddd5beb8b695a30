"""The sinks' Kafka side: a read_committed group consumer that hands out batches, commits
offsets only when told (after the store's commit) and can hold its position while the
store is away (partitions paused, the group membership kept alive by polling).

Its fetch wait widens when the broker starves it: tansu lists every batch of a partition
for each fetch that finds data and answers nothing when the listing outlasts the wait
(README, the embedded broker's quirks), so at 50 ms a keel.events partition past ~75k
batches (fewer on a busy machine) would never be read again, not even after a restart.
Once a second the consumer's assigned partitions are looked at (infra.fetchwait.Starving);
when one behind its end has not moved (or only crawled) for STARVED_CHECKS looks, the wait
doubles (up to infra.fetchwait.MAX_WAIT_MS) and never narrows. librdkafka fixes the wait
when the client is made, so the consumer is replaced: the old one leaves the group (its
partitions are revoked: `generation` rises) and a new one joins with the same
subscription and callbacks.
That is a rebalance: the new owner resumes from the committed offsets (or the store's own
positions) and the store drops what it already holds.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from infra.fetchwait import Starving, doubled
from infra.kafka import StableEnds, consumer_config
from infra.logs import event
from infra.settings import Settings

log = logging.getLogger(__name__)

# Errors a consumer reports while the broker or a topic is not there yet: keep polling.
_QUIET = {KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART,
          KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}

# tansu 0.6 holds a fetch for the whole wait even when records are there: at librdkafka's
# 500 ms, 5k events/s reached PostgreSQL in 225 ms (p50); 53 ms at 50 ms.
FETCH_WAIT_MS = 50
STARVE_CHECK_S = 1.0
# Looks in a row a partition behind its readable end must stand still to count as starved.
STARVED_CHECKS = 5


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


class _Assigning:
    """The consumer as an on_assign callback sees it: where it assigns the partitions (the
    store's own positions) is where they resume, not the committed offsets."""

    def __init__(self, consumer: Consumer, resumes: dict[tuple[str, int], int]) -> None:
        self._consumer, self._resumes = consumer, resumes

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.assign(partitions)
        self._resumes.update({(tp.topic, tp.partition): tp.offset for tp in partitions})

    def __getattr__(self, name: str):
        return getattr(self._consumer, name)


class Source:
    _look_at = float("inf")      # next starvation look (a Source made bare never looks)

    def __init__(self, settings: Settings, group: str, topics: list[str], client_id: str,
                 max_records: int = 5000, poll_timeout: float = 0.1,
                 on_assign: Callable[[Consumer, list[TopicPartition]], None] | None = None,
                 eager: bool = False, linger: float | None = None,
                 fetch_wait_ms: int = FETCH_WAIT_MS, **overrides) -> None:
        self._conf = consumer_config(settings, group, client_id,
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
                               # Topics created after we subscribed are found in seconds.
                               topic_metadata_refresh_interval_ms=5000,
                               log_level=3, **overrides)
        self.fetch_wait_ms = fetch_wait_ms     # widens when starved, never narrows
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
        self._starving = Starving(STARVED_CHECKS)
        self._look_at = time.monotonic() + STARVE_CHECK_S
        self._resumes: dict[tuple[str, int], int] = {}  # where position-less ones resume
        self.consumer = self._join()

    def _join(self) -> Consumer:
        # The starvation looks measure a read_committed reader's lag to the last stable
        # offset: behind an open transaction (an engine stopped inside one) it is at its
        # end, not starved.
        self._ends = StableEnds()
        consumer = Consumer({**self._conf, "fetch.wait.max.ms": self.fetch_wait_ms,
                             **self._ends.options(STARVE_CHECK_S)})
        consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked)
        return consumer

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._resumes.clear()
        event(log, "partitions assigned", logging.INFO,
              partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self._on_assign is not None:
            self._on_assign(_Assigning(consumer, self._resumes), partitions)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.generation += 1
        self._resumes.clear()
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
        # Looked at before consuming: what we hand out is a replaced consumer's new one.
        if time.monotonic() >= self._look_at:
            self._look_at = time.monotonic() + STARVE_CHECK_S
            self._watch()
        # The caller (SinkLoop._take) keeps the collector off while the batch's Message
        # objects live: 20k of them set off ~30 collections otherwise.
        msgs = self._consume(wait)
        self._short = len(msgs) < self.max_records
        # A list comprehension: map(methodcaller("error"), ...) made a bound method per
        # message (~250 against ~75 ns a message, 83k real Messages).
        errors = [m.error() for m in msgs]
        if errors.count(None) == len(errors):
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

    def _watch(self) -> None:
        """Widen the fetch wait when a partition behind its end stands still."""
        try:
            lags, positions = self.looks()
        except KafkaException as exc:       # a look must never stop the sink
            event(log, "fetch wait look failed", logging.DEBUG, error=str(exc))
            return
        wider = doubled(self.fetch_wait_ms) if self._starving.check(lags, positions) else None
        if wider is None:
            return
        self.fetch_wait_ms = wider
        event(log, "fetch wait widened: a partition behind its end is not moving",
              logging.WARNING, wait_ms=self.fetch_wait_ms, behind=sum(1 for n in lags if n))
        # Leaving the group revokes our partitions (generation rises, batches in flight
        # are stale: their commits may fail and they are replayed). Nothing was committed
        # past a written batch, so the new member resumes at or before what was written.
        self.generation += 1
        self.consumer.close()
        self._resumes.clear()
        self.consumer = self._join()

    def looks(self) -> tuple[list[int | None], list[int | None]]:
        """Per assigned partition, in a fixed order: records between where the consumer
        resumes and the readable end its fetches reported (the high watermark, or below an
        open transaction the last stable offset; cached: no broker round trip; None if
        unknown), and where it resumes. Before it has handed a record over
        librdkafka knows no position: it resumes where on_assign assigned it, else at the
        committed offset (one OffsetFetch per assignment, kept), or with none committed
        at the low watermark (offsets reset to the earliest): a partition starved from its
        first fetch would count as unknown, not behind, otherwise."""
        assignment = sorted(self.consumer.assignment(),
                            key=lambda tp: (tp.topic, tp.partition))
        if not assignment:
            return [], []
        missing = [tp for tp in self.consumer.position(assignment)
                   if tp.offset < 0 and (tp.topic, tp.partition) not in self._resumes]
        if missing:
            for tp in self.consumer.committed(missing, timeout=2.0):
                self._resumes[(tp.topic, tp.partition)] = tp.offset
        lags: list[int | None] = []
        positions: list[int | None] = []
        for tp in self.consumer.position(assignment):
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            end = self._ends.end(tp.topic, tp.partition, high)
            at = tp.offset
            if at < 0:
                at = self._resumes.get((tp.topic, tp.partition), -1)
                at = at if at >= 0 else low
            known = at >= 0 and high >= 0
            lags.append(max(0, end - at) if known else None)
            positions.append(at if at >= 0 else None)
        return lags, positions

    @staticmethod
    def ends(msgs: list) -> dict[tuple[str, int], int]:
        """(topic, partition) -> offset of the last of `msgs` there."""
        return ends_of(msgs, [m.topic() for m in msgs],
                       np.array([m.partition() for m in msgs], np.int64))

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
