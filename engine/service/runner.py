"""The engine process: one consumer for its keel.orders partitions, one worker per partition.

The loop gathers a batch (bounded by count and time), hands each partition its records
(the primaries' transactions then run side by side, one thread per partition), and between
batches tells the beat thread which partitions it leads, reads the committed offset
(standbys), and takes over a partition whose primary went silent. SIGTERM/SIGINT finish
the current transaction and return 0; a fenced writer returns EXIT_FENCED so its
supervisor restarts it, as a standby.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from engine.markets import MarketsConfig
from engine.service.config import EngineOptions, transactional_id
from engine.service.fetchwait import FetchWait
from engine.service.heartbeat import Heartbeats
from engine.service.metrics import EngineMetrics
from engine.service.outcome import TXN_TIMEOUT, Fenced, Interrupted, TransactionFailed
from engine.service.partition import PartitionWorker, Role
from engine.service.reader import LogReader
from engine.service.tools import ensure_engine_topics
from infra.kafka import consumer_config, producer_config
from infra.logs import event
from infra.settings import Settings
from schemas.codec import Codec

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FENCED = 0, 3
IDLE_WAIT = 0.02
# SIGTERM to exit: the shutdown snapshot and the clients' goodbyes share this budget, so a
# process whose broker is gone still exits promptly (it lingered ~60 s: a 30 s snapshot
# transaction, then an unbounded flush).
STOP_BUDGET = 3.0
STANDBY_BUFFER = 200_000        # records held past the committed offset before pausing
FETCH_WAIT_CHECK_S = 0.5        # how often the live/catch-up fetch wait is reconsidered


class EngineService:
    def __init__(self, settings: Settings, markets: MarketsConfig, partitions: list[int],
                 standby: bool = False, opts: EngineOptions | None = None,
                 metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.markets = markets
        self.partitions = sorted(partitions)
        self.standby = standby
        self.opts = opts or EngineOptions.from_settings(settings)
        self.metrics = metrics or EngineMetrics()
        self.codec = Codec.from_settings(settings)
        self.stopping = False
        self.workers: dict[int, PartitionWorker] = {}
        self._paused: set[int] = set()
        self._pool: ThreadPoolExecutor | None = None
        self.fetch_wait = FetchWait(self.opts.fetch_wait_ms, self.opts.catch_up_wait_ms)

    def stop(self, *_args) -> None:
        self.stopping = True

    # ---- wiring ----

    def _producer(self, partition: int) -> Producer:
        """A transactional producer, connected and with metadata, but not yet initialised:
        init_transactions (which fences the previous writer) is the takeover itself, and
        on a warm client it takes milliseconds instead of a cold client's ~0.5 s."""
        producer = Producer(producer_config(
            self.settings, f"keel-engine-{partition}",
            transactional_id=transactional_id(partition, self.settings.topic_prefix),
            linger_ms=int(self.opts.linger_ms), transaction_timeout_ms=60_000,
            queue_buffering_max_messages=500_000))
        producer.list_topics(self.opts.events_topic, timeout=TXN_TIMEOUT)
        return producer

    def _consumer(self) -> Consumer:
        return Consumer(consumer_config(
            self.settings, self.opts.group_id, "keel-engine",
            fetch_wait_max_ms=self.fetch_wait.current, fetch_min_bytes=1,
            queued_max_messages_kbytes=65_536, max_partition_fetch_bytes=8 * 1024 * 1024))

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self.stop)
        opts = self.opts
        # Idempotent: `keel up` provisions the catalog, a lone `keel engine` does it here.
        ensure_engine_topics(self.settings, self.markets)
        self.reader = LogReader(self.settings, opts.group_id)
        self.consumer = self._consumer()
        self.beats = Heartbeats(self.settings, opts.heartbeats_topic, opts.group_id,
                                self.partitions, opts.heartbeat_s)
        self.beats.start()
        try:
            return self._run()
        except Fenced as exc:
            event(log, "fenced: another instance owns the partition; writing nothing more",
                  logging.ERROR, reason=str(exc), exit_code=EXIT_FENCED)
            return EXIT_FENCED
        except Interrupted as exc:
            event(log, "stopped with a transaction unfinished; the next writer aborts it",
                  logging.WARNING, reason=str(exc))
            return EXIT_OK
        finally:
            self._close()

    def _run(self) -> int:
        opts, reader = self.opts, self.reader
        self._warm = {p: self._producer(p) for p in self.partitions}
        if len(self.partitions) > 1:
            self._pool = ThreadPoolExecutor(len(self.partitions), "keel-engine-txn")
        take_now = []
        for p in self.partitions:
            worker = PartitionWorker(p, self.markets, opts, self.codec, self.metrics)
            worker.stale = lambda p=p: self._other_live(p)
            worker.stopping = lambda: self.stopping
            worker.recover(reader, reader.committed(opts.orders_topic, p), lambda offset, p=p:
                           self.consumer.incremental_assign(
                               [TopicPartition(opts.orders_topic, p, offset)]))
            self.workers[p] = worker
            if self.standby or self.beats.live_primary(p, opts.takeover_s):
                event(log, "starting as standby", partition=p, asked=self.standby)
            else:
                take_now.append(p)
        # What exists now (modules, schemas, clients, restored books) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which otherwise walk
        # all of it every few batches. Measured in-process per command (primary path, 5,000
        # records a transaction): ~2.2 -> 1.7 us, and ~3.7 -> 2.9 us when every record's
        # keel-source header is read (its header list lives as long as the batch); ~2.5 ->
        # 2.1 us now that only non-Place records' headers are (engine.service.duplicates).
        gc.freeze()
        for p in take_now:
            self._take_over(p)
        committed_at = lag_at = waited_at = 0.0
        while not self.stopping:
            self._pump()
            now = time.monotonic()
            self.beats.lead([p for p, w in self.workers.items() if w.role is not Role.STANDBY])
            if now - committed_at >= opts.committed_poll_s:
                committed_at = now
                for p, w in self.workers.items():
                    if w.role is Role.STANDBY:
                        w.target = reader.committed(opts.orders_topic, p)
                        self._step(w)
            for p, w in self.workers.items():
                if w.role is Role.STANDBY and self.beats.silent_for(p) > opts.takeover_s:
                    event(log, "primary silent, taking over", partition=p,
                          silent_s=round(self.beats.silent_for(p), 3))
                    self._take_over(p)
                elif w.role is Role.TAKING_OVER:
                    self._step(w)
            if now - lag_at >= 1.0:
                lag_at = now
                self._observe()
            if now - waited_at >= FETCH_WAIT_CHECK_S:
                waited_at = now
                self._tune_fetch_wait()
        event(log, "stopping", partitions=self.partitions)
        deadline = time.monotonic() + STOP_BUDGET
        if not self._broker_answers(1.0):
            # librdkafka's send_offsets_to_transaction does not keep its timeout while no
            # broker is reachable (it waited out the 60 s transaction timeout): skip the
            # shutdown snapshot, the next start replays from the last one.
            event(log, "broker unreachable: stopping without a shutdown snapshot",
                  logging.WARNING)
            return EXIT_OK
        for w in self.workers.values():
            left = deadline - time.monotonic()
            if left <= 0:
                break       # the log's last snapshot and offsets stay valid
            try:
                w.checkpoint(left)
            except (TransactionFailed, Interrupted):
                pass        # the log's last snapshot and offsets stay valid
        return EXIT_OK

    def _broker_answers(self, timeout: float) -> bool:
        try:
            self.consumer.list_topics(self.opts.orders_topic, timeout=timeout)
        except Exception:  # noqa: BLE001 - any failure means "not now"
            return False
        return True

    def _take_over(self, p: int) -> None:
        worker = self.workers[p]
        producer = self._warm.pop(p, None) or self._producer(p)
        producer.init_transactions(TXN_TIMEOUT)     # fences any earlier writer, aborts its txn
        seek = worker.take_over(producer, self.reader, self.consumer.consumer_group_metadata())
        if seek is not None:
            self.consumer.seek(TopicPartition(self.opts.orders_topic, p, seek))
        self.beats.mark_alive(p)
        self._step(worker)

    def _pump(self) -> None:
        """Gather one batch and hand each partition its records."""
        opts, consumer = self.opts, self.consumer
        first = consumer.poll(IDLE_WAIT)
        if first is None:
            return
        received = time.monotonic()
        msgs = [first] + consumer.consume(opts.max_batch - 1, 0)
        # The time bound fills a batch only when more records are already at the broker
        # (a backlog: the next fetch brings them at once). At a steady rate what is queued
        # is all there is until the next fetch, so waiting added max_batch_ms to every
        # record's latency for nothing: close the batch now.
        if opts.max_batch_ms > 0 and len(msgs) < opts.max_batch and self._behind(msgs[-1]):
            left = received + opts.max_batch_ms / 1000 - time.monotonic()
            if left > 0:
                msgs += consumer.consume(opts.max_batch - len(msgs), left)
        touched = set()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    event(log, "consumer error", logging.WARNING, error=str(err))
                continue
            worker = self.workers.get(msg.partition())
            if worker is not None:
                worker.offer(msg, received)
                touched.add(worker)
        self._step_all(touched)

    def _step_all(self, workers) -> None:
        """Step every touched partition, the primaries' transactions side by side.

        Each transaction is ~5 broker round trips (offsets, produce, commit) during which
        its thread holds no GIL; one after another, a batch touching three partitions made
        the last one's orders wait out the other two commits (at 50 orders/s, with commits
        of ~40 ms on a busy machine, ~3 commits per cycle: the engine's share of order->fill
        was ~3x one commit). A partition's own records stay in order: one thread each, and
        this returns only when every one is done."""
        primaries = [w for w in workers if w.role is Role.PRIMARY]
        if self._pool is None or len(primaries) < 2:
            for worker in workers:
                self._step(worker)
            return
        for worker in workers:
            if worker not in primaries:
                self._step(worker)
        running = [(w, self._pool.submit(w.step, self.reader)) for w in primaries]
        fatal: BaseException | None = None
        for worker, future in running:
            try:
                future.result()
            except TransactionFailed:
                if fatal is None:
                    try:
                        self._recover_failed(worker)
                    except BaseException as exc:  # noqa: BLE001 - raised after the others end
                        fatal = exc
            except BaseException as exc:  # noqa: BLE001 - raised once every thread is done
                fatal = fatal or exc
            self._flow_control(worker)
        if fatal is not None:
            raise fatal

    def _behind(self, last) -> bool:
        """More of `last`'s partition is at the broker than reached us: the high watermark
        the last fetch reported (no broker round trip) lies past the record just taken.
        (With several partitions only the last record's is asked: a batch is closed early
        at worst, never held.)"""
        if last.error() is not None:
            return False
        try:
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.opts.orders_topic, last.partition()), cached=True)
        except Exception:  # noqa: BLE001 - unknown: behave as before, wait for the batch
            return True
        return high < 0 or high > last.offset() + 1

    def _step(self, worker: PartitionWorker) -> None:
        try:
            worker.step(self.reader)
        except TransactionFailed:
            self._recover_failed(worker)
        self._flow_control(worker)

    def _recover_failed(self, worker: PartitionWorker) -> None:
        """After an aborted transaction (main thread: the reader and consumer are its own)."""
        if self._other_live(worker.partition):
            # Someone else is beating for this partition: we are the stale one.
            raise Fenced("transaction failed while another instance is live") from None
        offset = worker.rebuild(self.reader)
        self.consumer.seek(TopicPartition(self.opts.orders_topic, worker.partition, offset))

    def _other_live(self, partition: int) -> bool:
        self.beats.refresh()
        return self.beats.other_live(partition, self.opts.takeover_s)

    def _flow_control(self, worker: PartitionWorker) -> None:
        """A standby holds records past the committed offset; pause rather than hoard."""
        tp = [TopicPartition(self.opts.orders_topic, worker.partition)]
        if len(worker.pending) > STANDBY_BUFFER and worker.partition not in self._paused:
            self.consumer.pause(tp)
            self._paused.add(worker.partition)
        elif len(worker.pending) < STANDBY_BUFFER // 2 and worker.partition in self._paused:
            self.consumer.resume(tp)
            self._paused.discard(worker.partition)

    def _resume_at(self, worker: PartitionWorker) -> int:
        """Where the consumer must go on for `worker`: past what it holds already."""
        return worker.pending[-1][0].offset() + 1 if worker.pending else worker.next_offset

    def _tune_fetch_wait(self) -> None:
        lags, positions = [], []
        for p, w in self.workers.items():
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.opts.orders_topic, p), cached=True)
            except Exception:  # noqa: BLE001 - unknown for now
                high = -1
            resume = self._resume_at(w)
            paused = p in self._paused            # not moving on purpose
            lags.append(max(0, high - resume) if high >= 0 and not paused else None)
            positions.append(resume)
        before = (self.fetch_wait.live_ms, self.fetch_wait.catch_up_ms)
        wait = self.fetch_wait.decide(
            all(w.role is Role.PRIMARY for w in self.workers.values()), lags, positions)
        if before != (self.fetch_wait.live_ms, self.fetch_wait.catch_up_ms):
            event(log, "fetch wait widened: a partition behind its end is not moving",
                  logging.WARNING, live_ms=self.fetch_wait.live_ms,
                  catch_up_ms=self.fetch_wait.catch_up_ms, lags=lags)
        if wait is not None:
            self._switch_consumer(wait, lags)

    def _switch_consumer(self, wait_ms: int, lags: list) -> None:
        """The same assignment on a consumer with another fetch wait (librdkafka fixes it
        at creation). What the old one had fetched but not handed out is fetched again."""
        self.fetch_wait.current = wait_ms
        old, self.consumer = self.consumer, self._consumer()
        self.consumer.assign([TopicPartition(self.opts.orders_topic, p, self._resume_at(w))
                              for p, w in self.workers.items()])
        metadata = self.consumer.consumer_group_metadata()
        for w in self.workers.values():
            if w.producer is not None:
                w.group_metadata = metadata
        self._paused.clear()
        for w in self.workers.values():
            self._flow_control(w)
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old client is done with either way
            pass
        event(log, "consumer fetch wait switched", wait_ms=wait_ms, lags=lags)

    def _observe(self) -> None:
        m, topic = self.metrics, self.opts.orders_topic
        for p, w in self.workers.items():
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                              cached=True)
            except Exception:  # noqa: BLE001 - metrics never stop the engine
                high = -1
            if high >= 0:
                m.lag.labels(p).set(max(0, high - w.next_offset))
            for pair, book in w.books.items():
                bids, asks = book.depth(self.opts.depth_levels)
                m.depth.labels(pair, "bid").set(sum(q for _, q in bids))
                m.depth.labels(pair, "ask").set(sum(q for _, q in asks))

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)      # no transaction is running: _step_all joined
        # Bounded: after a commit nothing transactional is left to deliver, and a broker
        # that is gone would hold an unbounded flush for the messages' whole timeout.
        closers = [lambda w=w: w.producer.flush(1.0) for w in self.workers.values()
                   if w.producer is not None]
        for closer in (*closers, self.beats.close, self.consumer.close, self.reader.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
