"""The gateway's Kafka feed: one group-less consumer assigned every partition of the
topics it folds (every instance sees every pair), read on a thread and handed to the
event loop batch by batch.

Batches go into a FIFO the loop drains, a batch per plain callback, with a drain scheduled
only when none is pending; the loop never has to wake the thread. At order rates most batches hold one or
two records, and a per-batch hand-over (a task and chained futures, later a lock the loop
released) cost more than folding them — the wake-up syscall is made holding the GIL.
When MAX_QUEUED batches wait, the thread pauses, so a busy loop slows the consumer instead
of piling up memory. `ready` is set once every partition has reached the end it had at
start: before that, order state and books are still catching up.

Two fetch waits: the embedded broker (tansu 0.6) answers a fetch only when its wait runs
out and returns what it assembled by then, so a short wait keeps a live tail's latency
low but reads a backlog of small batches very slowly — at 5 ms, not at all (a probe read
0 of 20,000 single-record batches in 30 s; at 100 ms it read them in under 4 s). The feed
reads with CATCH_UP_WAIT_MS until every partition has reported its end, then hands the
positions to a consumer with LIVE_WAIT_MS; when the live consumer falls LAG_RECORDS
behind, it goes back to catching up. Both waits widen for good when a partition behind
its end stops moving (infra.fetchwait): tansu lists a partition's every batch for each
fetch and answers nothing when that outlasts the wait, so past ~8k batches (keel.replies
after some hours at a low rate) the 5 ms live wait would read nothing from it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from gateway.state import Folding
from infra.fetchwait import Starving, widened
from infra.kafka import StableEnds, consumer_config
from infra.logs import event
from infra.settings import Settings
from schemas.codec import Codec, CodecError

log = logging.getLogger("keel.gateway.feed")
MAX_QUEUED = 8                      # batches (of up to 1000 records) waiting for the loop
LIVE_WAIT_MS = 5                    # fetch wait at the tail: adds up to this to every hop
CATCH_UP_WAIT_MS = 100              # fetch wait while reading a backlog
LAG_RECORDS = 5000                  # behind by this many records: catch up again
LAG_CHECK_S = 1.0
# Checks in a row a partition behind its readable end must stand still to count as
# starved (an open transaction's records are not behind: the end is the last stable offset).
STARVED_CHECKS = 5
TOPICS = ("events", "depth", "tickers", "candles", "balances", "replies")


class Feed:
    def __init__(self, settings: Settings, codec: Codec, folding: Folding,
                 client_id: str = "keel-gateway") -> None:
        self.settings = settings
        self.codec = codec
        self.folding = folding
        self.client_id = client_id
        self.ready = asyncio.Event()
        self.decode_errors = 0
        self.live = False                # reading with the live fetch wait (else catching up)
        self.live_wait_ms = LIVE_WAIT_MS
        self.catch_up_wait_ms = CATCH_UP_WAIT_MS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_eof: set[tuple[str, int]] = set()
        self._assigned: dict[tuple[str, int], int] = {}      # by the last consumer switch
        self._queue: deque[list] = deque()
        self._scheduled = False
        full = {settings.topic(t): t for t in TOPICS}
        self._short = full
        self._handlers = {
            settings.topic("events"): self._event,
            settings.topic("depth"): lambda v: folding.on_depth(codec.decode("depth_update", v)),
            settings.topic("tickers"): lambda v: folding.on_ticker(codec.decode("ticker", v)),
            settings.topic("candles"): lambda v: folding.on_candle(codec.decode("candle", v)),
            settings.topic("balances"): lambda v: folding.on_balance(codec.decode("balance", v)),
            settings.topic("replies"): lambda v: folding.on_reply(codec.decode("reply", v)),
        }

    def _event(self, value: bytes) -> None:
        self.folding.on_event(self.codec.decode_event(value))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        consumer = self._consumer(self.catch_up_wait_ms)
        meta = consumer.list_topics(timeout=10)
        assignment = []
        for topic in self._handlers:
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                event(log, "topic missing; the gateway will not see it", logging.WARNING,
                      topic=topic)
                continue
            for p in info.partitions:
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
                self._pending_eof.add((topic, p))
        consumer.assign(assignment)
        if not self._pending_eof:
            self.ready.set()
        self._thread = threading.Thread(target=self._run, args=(consumer, assignment),
                                        name="gateway-feed", daemon=True)
        self._thread.start()

    def _consumer(self, fetch_wait_ms: int) -> Consumer:
        self._ends = StableEnds()        # the new consumer's: lags are measured with it
        return Consumer(consumer_config(self.settings, None, client_id=self.client_id,
                                        enable_partition_eof=True,
                                        fetch_wait_max_ms=fetch_wait_ms,
                                        queued_min_messages=1000,
                                        **self._ends.options(LAG_CHECK_S)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, consumer: Consumer, assignment: list[TopicPartition]) -> None:
        catching_up = True
        unfinished = {(tp.topic, tp.partition) for tp in assignment}
        next_check = time.monotonic() + LAG_CHECK_S
        starving = Starving(STARVED_CHECKS)
        try:
            while not self._stop.is_set():
                # consume() waits for the whole batch or the timeout, so block on the first
                # record only and take whatever else is already fetched without waiting.
                first = consumer.poll(0.05)
                if first is not None:
                    batch = [first, *consumer.consume(1000, 0)]
                    self._queue.append(batch)
                    # The loop clears the flag only with the queue empty and looks again
                    # after, so no batch is left behind without a drain scheduled.
                    if not self._scheduled:
                        self._scheduled = True
                        self._loop.call_soon_threadsafe(self._drain)
                    while len(self._queue) >= MAX_QUEUED and not self._stop.is_set():
                        time.sleep(0.002)
                    if catching_up:
                        for msg in batch:
                            err = msg.error()
                            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                                unfinished.discard((msg.topic(), msg.partition()))
                if catching_up and not unfinished:
                    consumer = self._switch(consumer, assignment, self.live_wait_ms)
                    catching_up = False
                    self.live = True
                elif time.monotonic() >= next_check:
                    next_check = time.monotonic() + LAG_CHECK_S
                    lags, positions = self._lags(consumer, assignment)
                    lag = sum(n for n in lags if n)
                    if starving.check(lags, positions) and self._widen(not catching_up, lags):
                        consumer = self._switch(consumer, assignment, self.catch_up_wait_ms)
                    elif catching_up or lag <= LAG_RECORDS:
                        continue
                    else:
                        event(log, "gateway feed behind; catching up", logging.WARNING,
                              records=lag)
                        consumer = self._switch(consumer, assignment, self.catch_up_wait_ms)
                    if not catching_up:
                        catching_up, self.live = True, False
                        unfinished = {(tp.topic, tp.partition) for tp in assignment}
        except RuntimeError:             # the loop closed under us at shutdown
            pass
        finally:
            consumer.close()

    def _switch(self, consumer: Consumer, assignment: list[TopicPartition],
                fetch_wait_ms: int) -> Consumer:
        """A consumer with another fetch wait, assigned where `consumer` stopped handing
        records over (records it fetched and did not hand over are fetched again)."""
        positions = self._positions(consumer, assignment)
        consumer.close()
        fresh = self._consumer(fetch_wait_ms)
        fresh.assign([TopicPartition(tp.topic, tp.partition,
                                     tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                      for tp in positions])
        self._assigned = {(tp.topic, tp.partition): tp.offset for tp in positions
                          if tp.offset >= 0}
        return fresh

    def _positions(self, consumer: Consumer, assignment: list[TopicPartition]
                   ) -> list[TopicPartition]:
        """Where `consumer` goes on: its position, or, before it has handed anything
        over, where it was assigned (librdkafka knows no position until then)."""
        return [tp if tp.offset >= 0 else TopicPartition(
                    tp.topic, tp.partition, self._assigned.get((tp.topic, tp.partition), -1))
                for tp in consumer.position(assignment)]

    def _widen(self, live_now: bool, lags: list[int | None]) -> bool:
        waits = widened(self.live_wait_ms, self.catch_up_wait_ms, live_now)
        if waits is None:
            return False
        self.live_wait_ms, self.catch_up_wait_ms = waits
        event(log, "gateway feed fetch wait widened: a partition behind its end is not "
              "moving", logging.WARNING, live_ms=self.live_wait_ms,
              catch_up_ms=self.catch_up_wait_ms, behind=sum(1 for n in lags if n))
        return True

    def _lags(self, consumer: Consumer, assignment: list[TopicPartition]
              ) -> tuple[list[int | None], list[int | None]]:
        """Per partition: records between the consumer's position and the readable end its
        fetches reported (the high watermark, or below an open transaction its last
        stable offset; cached: no broker round trip; None if not known yet), and the
        position."""
        lags: list[int | None] = []
        positions: list[int | None] = []
        for tp in self._positions(consumer, assignment):
            lag = None
            if tp.offset >= 0:
                try:
                    _low, high = consumer.get_watermark_offsets(tp, cached=True)
                    end = self._ends.end(tp.topic, tp.partition, high)
                    lag = max(0, end - tp.offset) if high >= 0 else None
                except Exception:        # no fetch answered for it yet
                    pass
            lags.append(lag)
            positions.append(tp.offset if tp.offset >= 0 else None)
        return lags, positions

    def _drain(self) -> None:
        """One batch per loop turn, as before: what it published is flushed to the
        WebSocket clients, and waiting requests are served, before the next is folded."""
        queue = self._queue
        if queue:
            try:
                self._deliver(queue.popleft())
            except Exception:
                log.exception("feed batch failed")
        if queue:
            self._loop.call_soon(self._drain)
            return
        self._scheduled = False
        if queue:                        # appended after our look, while the flag was set
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _deliver(self, msgs) -> None:
        handlers = self._handlers
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._pending_eof.discard((msg.topic(), msg.partition()))
                    if not self._pending_eof and not self.ready.is_set():
                        self.ready.set()
                        event(log, "gateway feed caught up", logging.INFO)
                else:
                    event(log, "consumer error", logging.WARNING, error=str(err))
                continue
            value = msg.value()
            if value is None:
                continue
            try:
                handlers[msg.topic()](value)
            except CodecError as exc:
                # Not ours to dead-letter (the writer's consumers do); skip and count it.
                self.decode_errors += 1
                event(log, "undecodable record skipped", logging.WARNING, topic=msg.topic(),
                      offset=msg.offset(), reason=exc.reason)
            except Exception:
                # A record the folding cannot apply is a bug to see in the logs, but it must
                # never stop the feed: every other pair and user depends on it.
                self.decode_errors += 1
                log.exception("record could not be applied: %s[%d]@%d", msg.topic(),
                              msg.partition(), msg.offset())
