"""One engine partition: its books, its transactional producer, its place in keel.orders.

A partition is a STANDBY (applies input quietly up to the group's committed offset),
TAKING_OVER (has fenced the old writer and catches up to the committed offset), or
PRIMARY (one Kafka transaction per batch: events, dead letters, depth and the input
offset; when a snapshot is due, a second transaction right after it holding the snapshot
and the same offset, so a snapshot's cost never delays a batch's events). The state
machine lives here (how a transaction ends, in engine.service.outcome); the process loop
in engine.service.runner only feeds records and ticks.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from enum import Enum
from typing import NoReturn

from confluent_kafka import KafkaException, TopicPartition

from engine.engine import Engine
from engine.markets import MarketsConfig
from engine.service.config import EngineOptions
from engine.service.depth import DepthFeed
from engine.service.duplicates import DuplicateFilter, report_dropped
from engine.service.metrics import EngineMetrics
from engine.service.outcome import COMMIT_TIMEOUT, TXN_TIMEOUT, Refused, commit, fail
from engine.service.routing import Fault, Router
from engine.service.snapshots import chunk_records, find_latest, pack_state, unpack_state
from infra.logs import event
from schemas.codec import Codec, CodecError

log = logging.getLogger(__name__)


class Role(Enum):
    STANDBY = "standby"
    TAKING_OVER = "taking_over"
    PRIMARY = "primary"


class PartitionWorker:
    def __init__(self, partition: int, markets: MarketsConfig, opts: EngineOptions,
                 codec: Codec, metrics: EngineMetrics, clock=time.monotonic) -> None:
        self.partition = partition
        self.markets = markets
        self.opts = opts
        self.codec = codec
        self.metrics = metrics
        self.clock = clock
        self.router = Router(codec, markets, partition)
        self.wire = self.router.wire
        self.market_list = markets.pairs_on(partition)
        self._reset_engine(Engine(self.market_list, opts.impl), DuplicateFilter())
        self.next_offset = 0            # every keel.orders record below it is applied
        self.target = 0                 # standby/takeover: apply quietly up to here
        self.role = Role.STANDBY
        self.pending: deque = deque()   # (message, received_at) not applied yet
        self.producer = None
        self.group_metadata = None
        self.suppress: tuple[str, int] | None = None
        self.since_snapshot = 0
        self.snapshot_at = clock()
        self.last_ts = 0
        self.started_at = clock()
        self.live_at: float | None = None
        self.on_commit = None           # optional hook(latency_s, batch), for the bench
        self.stale = lambda: False      # the runner's "another instance beats for me" check
        self.stopping = lambda: False   # the runner's "SIGTERM came" check

    def _reset_engine(self, engine: Engine, duplicates: DuplicateFilter) -> None:
        self.engine = engine
        self.duplicates = duplicates        # copies of commands: part of the state
        self.books = {pair: engine.book(pair) for pair in engine.pairs()}
        self.keys = {pair: pair.encode() for pair in self.books}
        self.feed = DepthFeed(self.books, self.opts.depth_levels,
                              self.opts.depth_snapshot_every, self.opts.depth_snapshot_s)

    # ---- recovery ----

    def recover(self, reader, committed: int, on_offset=None) -> None:
        """Load the newest snapshot at or before `committed`; input resumes at its offset.
        `on_offset(offset)` hears where input resumes before the books are restored, so
        the consumer can start fetching while they are."""
        t0 = self.clock()
        snap = find_latest(reader, self.codec, self.opts.snapshots_topic, self.partition,
                           committed)
        if on_offset is not None:
            on_offset(0 if snap is None else snap.input_offset)
        if snap is None:
            self._reset_engine(Engine(self.market_list, self.opts.impl), DuplicateFilter())
            self.next_offset = 0
        else:
            # The hash covers the bytes; unpack_state() and restore() check their structure.
            if hashlib.sha256(snap.snapshot).hexdigest() != snap.state_hash:
                raise RuntimeError(f"partition {self.partition}: snapshot at input offset "
                                   f"{snap.input_offset} fails its state hash")
            engine_bytes, high, sources = unpack_state(snap.snapshot)
            self._reset_engine(Engine.restore(self.market_list, engine_bytes, self.opts.impl),
                               DuplicateFilter(high, sources))
            self.next_offset = snap.input_offset
        self.pending.clear()
        self.target = committed
        self.since_snapshot = 0
        self.snapshot_at = self.clock()
        event(log, "partition recovered from snapshot", partition=self.partition,
              snapshot_offset=None if snap is None else snap.input_offset,
              committed=committed, seconds=round(self.clock() - t0, 3))

    def take_over(self, producer, reader, group_metadata) -> int | None:
        """Become the writer: `producer` has just fenced the previous one (init_transactions).
        Returns an offset the consumer must seek to, if the state had to be rebuilt."""
        self.producer = producer
        self.group_metadata = group_metadata
        self.started_at = self.clock()
        committed = reader.committed(self.opts.orders_topic, self.partition)
        seek = None
        if committed < self.next_offset:
            # Never expected (a standby stops at the committed offset); rebuild to be safe.
            self.recover(reader, committed)
            seek = self.next_offset
        self.target = committed
        self.role = Role.TAKING_OVER
        self.metrics.role.labels(self.partition).set(0)
        return seek

    def _go_live(self, reader) -> None:
        """Caught up to the committed offset: start publishing where the log ends.

        A broker that does not hide aborted transactions from read_committed readers
        (tansu 0.6.0 does not: a fenced writer's open transaction is aborted but its
        records stay visible, and so do those of any transaction we abort) may already
        hold events and depth beyond the committed offset. They are exactly what this
        engine is about to produce, so events are suppressed up to the last one published
        and the depth chain resumes after the last published update id. On Apache Kafka
        the tail ends at the committed offset and nothing is suppressed.
        """
        for book in self.books.values():
            self.feed.discard(book)
        self.suppress = None
        last = reader.last(self.opts.events_topic, self.partition)
        if last is not None:
            try:
                ev = self.codec.decode_event(last.value())
            except CodecError as exc:
                event(log, "undecodable tail of keel.events", logging.WARNING,
                      partition=self.partition, error=str(exc))
            else:
                book = self.books.get(ev.pair)
                if book is not None and ev.seq > book.seq:
                    self.suppress = (ev.pair, ev.seq)
        for msg in reader.tail(self.opts.depth_topic, self.partition, 2 * len(self.books) + 4):
            try:
                rec = self.codec.decode("depth_update", msg.value())
            except CodecError:
                continue
            if rec["pair"] in self.books:
                pair = rec["pair"]
                self.feed.resume(pair, max(self.feed.next_first(pair), rec["last_update_id"] + 1))
        self.role = Role.PRIMARY
        self.live_at = self.clock()
        # Records held while standing by count their latency from now, not from arrival.
        self.pending = deque((msg, self.live_at) for msg, _ in self.pending)
        self.metrics.role.labels(self.partition).set(1)
        self.metrics.recovery.labels(self.partition).set(self.live_at - self.started_at)
        event(log, "partition is primary", partition=self.partition, offset=self.next_offset,
              suppress=self.suppress, seconds=round(self.live_at - self.started_at, 3))

    def rebuild(self, reader) -> int:
        """After an aborted transaction: back to the log's committed state (same producer).
        Returns the keel.orders offset the consumer must seek to."""
        self.recover(reader, reader.committed(self.opts.orders_topic, self.partition))
        self.role = Role.TAKING_OVER
        return self.next_offset

    # ---- input ----

    def offer(self, msg, received_at: float) -> None:
        if msg.offset() >= self.next_offset:
            self.pending.append((msg, received_at))

    def step(self, reader) -> int:
        """Apply what can be applied in the current role; returns records applied."""
        done = 0
        if self.role is not Role.PRIMARY:
            pending, target, route, books = self.pending, self.target, self.router.route, self.books
            admit = self.duplicates.admit
            while pending and pending[0][0].offset() < target:
                msg = pending.popleft()[0]
                cmd = route(msg.value())
                # A copy or a bad header: the primary dropped or dead-lettered it.
                if type(cmd) is not Fault and admit(cmd, msg) is True:
                    books[cmd.pair].apply(cmd)      # quietly: its events were published
                    self.last_ts = cmd.ts
                self.next_offset = msg.offset() + 1
                done += 1
            self.since_snapshot += done
            if self.role is Role.TAKING_OVER and self.next_offset >= target:
                self._go_live(reader)
        if self.role is Role.PRIMARY:
            while self.pending:
                n = min(len(self.pending), self.opts.max_batch)
                batch = [self.pending.popleft() for _ in range(n)]
                self._transact(batch)
                done += n
        return done

    # ---- the transaction ----

    def _produce(self, topic: str, value: bytes, key: bytes, partition: int, headers=None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.005)       # local queue full: let deliveries drain

    def _transact(self, batch: list) -> None:
        """One transaction: the batch's events, dead letters and depth, and its input offset.

        Every broker round trip that can overlap the matching does (see _apply): after
        it only the last records' Produce and EndTxn remain, instead of the offsets' two
        round trips (AddOffsetsToTxn, TxnOffsetCommit) and a second registration for depth
        in a row before EndTxn."""
        opts, part = self.opts, self.partition
        try:
            self.producer.begin_transaction()
            dropped, types = self._apply(batch)
            t_commit = self.clock()
            self._commit()
        except (KafkaException, Refused) as exc:
            self._fail(exc)
        if dropped:
            report_dropped(log, self.metrics, part, dropped)
        done = self.clock()
        m = self.metrics
        m.commit_time.observe(done - t_commit)
        m.batch.observe(len(batch))
        # Every record of a batch shares its consume time, so one latency per record.
        latency = done - batch[0][1]
        for (pair, kind), count in types.items():
            m.order_latency.observe((pair, kind.__name__), latency, count)
            m.orders.labels(pair).inc(count)
        if self.on_commit is not None:
            self.on_commit(latency, batch)
        if self.since_snapshot >= opts.snapshot_every or (
                done - self.snapshot_at >= opts.snapshot_every_s):
            # In a transaction of its own at the offset just committed, not in the batch's:
            # serializing and committing a large book (8.6 MB for 253k resting orders: ~45
            # ms of CPU, then the broker's write) held back the events of every order of
            # that batch.
            self.checkpoint()

    def _send_offsets(self, offset: int) -> None:
        self.producer.send_offsets_to_transaction(
            [TopicPartition(self.opts.orders_topic, self.partition, offset)],
            self.group_metadata, COMMIT_TIMEOUT)

    def _depth(self, pair: str, ts: int, now: float) -> None:
        for rec in self.feed.updates(self.books[pair], ts, now):
            self._produce(self.opts.depth_topic,
                          self.codec.encode("depth_update", rec, validate=False),
                          self.keys[pair], self.partition)

    def _apply(self, batch: list) -> tuple[list, dict]:
        """Match the batch and produce its records into the open transaction, and send its
        input offset. Returns the copies dropped and the count per (pair, command type).

        The first command with events starts every round trip that does not need the
        rest of the batch. librdkafka registers a partition with the transaction
        (AddPartitionsToTxn) on a 1 ms timer started by the partition's first record, and
        sends its records only once that is answered; a partition marked while a
        registration is in flight waits for it and goes in a second one. So that
        command's events and its pair's depth diff are produced at once (events and depth
        registered in one request, during the matching), and then the offset, known from
        the batch's last record, is sent (its two round trips run while the registration
        timer does). Produced at the end, the events' registration and Produce ran after
        the matching; the offsets after them; and the depth's registration after the
        events' (debug trace, 10,000 orders/s: AddOffsetsToTxn, TxnOffsetCommit,
        AddPartitionsToTxn(depth), Produce(depth), EndTxn in a row). The price: a batch of
        several commands on one pair publishes two depth diffs instead of one (the chain
        of update ids is the same). (Sending the offsets from another thread as the batch
        starts gained nothing: the matching holds the GIL, so that thread starts late.)"""
        opts = self.opts
        events_topic, records = opts.events_topic, self.wire.event_records
        books, keys, route = self.books, self.keys, self.router.route
        admit = self.duplicates.admit
        end = batch[-1][0].offset() + 1
        dropped: list = []              # copies: no event, no seq, offset committed
        touched: dict[str, int] = {}
        types: dict[tuple[str, type], int] = {}
        out: list[dict] = []            # keel.events records, in order, sent as one batch
        early = True                    # the first events go out at once (see above)
        for msg, _ in batch:
            cmd = route(msg.value())
            if type(cmd) is Fault:
                self._dead_letter(msg, cmd)
                continue
            verdict = admit(cmd, msg)
            if verdict is not True:
                if verdict is False:
                    dropped.append((msg.offset(), cmd))
                else:
                    self._dead_letter(msg, verdict)     # a malformed keel-source
                continue
            pair = cmd.pair
            evs = books[pair].apply(cmd)
            if self.suppress is not None:
                evs = self._unsuppressed(evs)
            out += records(evs, keys[pair])
            touched[pair] = last_ts = cmd.ts
            if early and out:
                self._produce_events(events_topic, out)
                out, early = [], False
                self._depth(pair, last_ts, self.clock())
                self._send_offsets(end)
            t = (pair, type(cmd))
            types[t] = types.get(t, 0) + 1
        if out:
            self._produce_events(events_topic, out)
        if early:
            self._send_offsets(end)
        self.next_offset = end
        if touched:
            self.last_ts = last_ts
        now = self.clock()
        for pair, ts in touched.items():
            self._depth(pair, ts, now)
        self.since_snapshot += len(batch)
        return dropped, types

    def _produce_events(self, topic: str, out: list[dict]) -> None:
        # One call instead of one per event (~0.6 us each). The local queue is empty at the
        # start of every transaction and far larger than a batch, so a refusal is a fault:
        # a partial batch could not keep the events in order, so it aborts.
        if self.producer.produce_batch(topic, out, partition=self.partition) != len(out):
            raise Refused(next((m["_error"] for m in out if "_error" in m), "refused"))

    def checkpoint(self, timeout: float = TXN_TIMEOUT) -> None:
        """A transaction holding only a snapshot and the current offset: after a batch when
        one is due, and at a clean shutdown, so the next start replays nothing. `timeout`
        bounds its broker calls (shutdown: a gone broker must not hold the process)."""
        if self.role is not Role.PRIMARY or self.since_snapshot == 0:
            return
        try:
            self.producer.begin_transaction()
            self._write_snapshot()
            self.producer.send_offsets_to_transaction(
                [TopicPartition(self.opts.orders_topic, self.partition, self.next_offset)],
                self.group_metadata, timeout)
            self._commit(timeout)
        except KafkaException as exc:
            self._fail(exc)

    def _commit(self, timeout: float = 4 * COMMIT_TIMEOUT) -> None:
        commit(self.producer, self.partition, timeout, self.stale, self.stopping, self.clock)

    def _fail(self, exc: Exception) -> NoReturn:
        fail(self.producer, self.partition, exc, self.stale, self.stopping)

    def _unsuppressed(self, evs: list) -> list:
        """Drop events a fenced writer already exposed (see _go_live)."""
        pair, seq = self.suppress
        out = []
        for ev in evs:
            if self.suppress is not None:
                if ev.pair == pair and ev.seq >= seq:
                    self.suppress = None
                    event(log, "caught up with the published tail", partition=self.partition,
                          pair=pair, seq=seq)
                    if ev.seq == seq:
                        continue
                else:
                    continue
            out.append(ev)
        return out

    def _dead_letter(self, msg, fault: Fault) -> None:
        _, ts = msg.timestamp()
        value = self.codec.encode("dead_letter", {
            "source_topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "key": msg.key(), "value": msg.value(), "reason": fault.reason,
            "error_code": fault.code, "consumer": "engine",
            # The input record's time, not the clock: the engine's output stays deterministic.
            "ts": max(ts, 0)}, validate=False)
        self._produce(self.opts.dlq_topic, value, self.opts.orders_topic.encode(), 0)
        self.metrics.dead_letters.labels(self.partition, fault.code).inc()
        event(log, "dead-lettered input", logging.WARNING, partition=self.partition,
              offset=msg.offset(), code=fault.code, reason=fault.reason)

    def _write_snapshot(self) -> None:
        data = pack_state(self.engine.snapshot(), self.duplicates.items(),
                          self.duplicates.source_items())
        digest = hashlib.sha256(data).hexdigest()
        for key, value, headers in chunk_records(self.codec, self.partition, self.next_offset,
                                                 data, digest, self.last_ts,
                                                 self.opts.chunk_bytes):
            self._produce(self.opts.snapshots_topic, value, key, self.partition, headers)
        self.since_snapshot = 0
        self.snapshot_at = self.clock()
        self.metrics.snapshot_bytes.labels(self.partition).set(len(data))
