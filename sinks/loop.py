"""The loop every sink runs: poll a batch, decode it (bad records to keel.dlq), write it to
the store (retrying with backoff while the store is away, position kept), and only then
commit the offsets. Delivery is at-least-once; the stores make it exactly-once by
dropping what they already hold.

Pipelined (the PostgreSQL sink): writes run on worker threads while the loop polls and
prepares the next batch, so the database and the decoding use a core each. Up to
`depth` batches are in flight at once, but only batches of disjoint partitions: a batch
that shares a partition with one in flight waits for it. Offsets are committed oldest
batch first, each only after its own write, and a batch given up (partitions revoked,
stopping) takes every batch behind it along, so no commit ever passes a batch that was
not written.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from infra.logs import event
from schemas.codec import CodecError, RegistryUnavailable
from sinks.dlq import DeadLetters
from sinks.metrics import SinkMetrics
from sinks.source import Source

log = logging.getLogger(__name__)

LAG_EVERY = 1.0          # seconds between lag metric refreshes
TABLES = ("trades", "orders", "depth_rows", "ledger_entries", "balances")


@dataclass(frozen=True)
class Backoff:
    first: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.first * (2 ** attempt))


@dataclass
class _Pending:
    batch: object
    dead: list
    generation: int
    ends: dict[tuple[str, int], int] = field(default_factory=dict)  # last offsets
    started: float = 0.0
    future: Future | None = field(default=None, repr=False)


class SinkLoop:
    def __init__(self, name: str, source: Source, decode: Callable[[object], object] | None,
                 write: Callable[[object], object], transient: tuple[type[BaseException], ...],
                 dead_letters: DeadLetters, metrics: SinkMetrics, stop: threading.Event,
                 backoff: Backoff = Backoff(),
                 on_written: Callable[[object, float], None] | None = None,
                 prepare: Callable[[list], tuple] | None = None,
                 pipeline: bool = False, depth: int = 2) -> None:
        self.name = name
        self.source = source
        self.decode = decode                 # message -> item for write(); CodecError = dead
        self.prepare = prepare               # messages -> (batch, [(message, CodecError)]
                                             # [, Source.ends() of the messages])
        self.write = write                   # items (or batch) -> a report with .max_ts (ms)
        self.transient = transient + (RegistryUnavailable,)
        self.dlq = dead_letters
        self.metrics = metrics
        self.stop = stop
        self.backoff = backoff
        self.on_written = on_written
        self.pipeline = pipeline
        self.depth = max(1, depth) if pipeline else 1
        self.batches = 0
        self._lag_at = 0.0
        self._inflight: deque[_Pending] = deque()
        self._worker: ThreadPoolExecutor | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.finish()

    def step(self) -> bool:
        """One poll; True when a batch was written and committed during it."""
        pending = self._take()
        if not self.pipeline:
            if pending is None:
                return False
            pending.started = time.monotonic()
            self._inflight.append(pending)
            return self._land() is True
        landed = False
        # Commit what is done; wait when idle (all of it), when full, or while the new
        # batch shares a partition with one in flight.
        while self._inflight and (pending is None or self._inflight[0].future.done()
                                  or len(self._inflight) >= self.depth
                                  or self._overlaps(pending)):
            result = self._land()
            if result is False:
                self._give_up()
                return landed
            landed = landed or result is True
        if pending is not None:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(self.depth,
                                                  thread_name_prefix=f"sink-{self.name}")
            pending.started = time.monotonic()
            pending.future = self._worker.submit(self.write, pending.batch)
            self._inflight.append(pending)
        return landed

    def _take(self) -> _Pending | None:
        """Poll and prepare a batch. The collector stays off until the batch's Message
        objects are gone (only what the batch became is kept): each is tracked, and a
        collection while tens of thousands of them lived walked them all, young and
        old generations alike (0.14-0.18 s per 280k events in bench/sinks.py, ~0.5 us
        an event). Messages hold no cycles; nothing is left for the collector."""
        collecting = gc.isenabled()
        gc.disable()
        msgs: list | None = None
        try:
            msgs = self.source.poll()
            self._refresh_lag()
            if not msgs:
                return None
            generation = self.source.generation
            prepared = self._retrying(lambda: self._prepare(msgs), generation)
            if prepared is None:
                return None
            # A prepare may give the batch's last offsets too (it read the topics and
            # partitions already); else they are read here.
            ends = prepared[2] if len(prepared) > 2 else self.source.ends(msgs)
            return _Pending(prepared[0], prepared[1], generation, ends)
        finally:
            msgs = None               # freed here, with the collector still off
            if collecting:
                gc.enable()

    def finish(self) -> bool:
        """Land every batch in flight, oldest first (when stopping, a failing one is given
        up with all behind it); True when all of them were committed."""
        try:
            while self._inflight:
                if self._land() is False:
                    self._give_up()
                    return False
            return True
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None

    def _overlaps(self, pending: _Pending) -> bool:
        mine = pending.ends.keys()
        return any(p.ends.keys() & mine for p in self._inflight)

    def _give_up(self) -> None:
        """Drop every batch in flight: each is left for a replay. A running write still
        finishes (its rows are idempotent), only its offsets are never committed."""
        while self._inflight:
            p = self._inflight.popleft()
            if p.future is not None:
                try:
                    p.future.result()
                except Exception as exc:  # noqa: BLE001 - the batch is dropped anyway
                    event(log, "write of a dropped batch failed", logging.DEBUG,
                          error=str(exc)[:300])

    def _land(self) -> bool | None:
        """Wait for the oldest batch in flight, then its dead letters and offsets. None:
        nothing was in flight; True: written and committed; False: given up (left for a
        replay; the caller drops what is behind it)."""
        if not self._inflight:
            return None
        p = self._inflight.popleft()
        failed = report = None
        if p.future is not None:
            try:
                report = p.future.result()
                self.metrics.store_up.labels(self.name).set(1)
            except self.transient as exc:
                failed = exc
        if report is None:
            report = self._retrying(lambda: self.write(p.batch), p.generation, failed)
            if report is None:
                return False
        self.metrics.batch_seconds.labels(self.name).observe(time.monotonic() - p.started)
        for msg, error in p.dead:
            self.dlq.send(msg, error)
            self.metrics.dead_letters.labels(self.name, str(error.code)).inc()
        if self.dlq.pending:                 # ours, and any the store set aside
            self.dlq.flush()
        self.source.commit(p.ends)
        self.batches += 1
        self._count(report)
        max_ts = getattr(report, "max_ts", 0)
        if max_ts:
            self.metrics.event_lag.labels(self.name).observe(max(0.0, time.time() - max_ts / 1000))
        if self.on_written is not None:
            self.on_written(report, time.time())
        return True

    def _count(self, report: object) -> None:
        for table in TABLES:
            n = getattr(report, table, 0)
            if n:
                self.metrics.rows.labels(self.name, table.removesuffix("_rows")).inc(n)
        if getattr(report, "replayed", 0):
            self.metrics.replayed.labels(self.name).inc(report.replayed)
        if getattr(report, "gaps", 0):
            self.metrics.seq_gaps.labels(self.name).inc(report.gaps)

    def _prepare(self, msgs: list) -> tuple[object, list]:
        if self.prepare is not None:
            return self.prepare(msgs)
        items, dead = [], []
        decode = self.decode
        for m in msgs:
            try:
                items.append(decode(m))
            except RegistryUnavailable:
                raise
            except CodecError as exc:
                dead.append((m, exc))
        return items, dead

    def _retrying(self, attempt: Callable[[], object], generation: int,
                  failed: BaseException | None = None):
        """attempt() until it succeeds; None when the partitions were revoked meanwhile or
        the sink is stopping (the batch is then left for the next owner). `failed`: the
        first attempt was already made elsewhere and raised this."""
        failures = 0
        while True:
            if failed is None:
                try:
                    result = attempt()
                    self.metrics.store_up.labels(self.name).set(1)
                    return result
                except self.transient as exc:
                    failed = exc
            failures += 1
            self.metrics.retries.labels(self.name).inc()
            self.metrics.store_up.labels(self.name).set(0)
            delay = self.backoff.delay(failures - 1)
            event(log, "store unavailable, retrying", logging.WARNING, sink=self.name,
                  attempt=failures, delay_s=round(delay, 2),
                  error=f"{type(failed).__name__}: {failed}"[:300])
            failed = None
            self.source.hold(delay)
            self._refresh_lag(force=True)
            if self.stop.is_set() or self.source.generation != generation:
                return None

    def _refresh_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._lag_at >= LAG_EVERY:
            self._lag_at = now
            try:
                self.metrics.set_lag(self.source.lag(ask_broker=force))
            except Exception as exc:  # a metric must never stop the sink
                event(log, "lag refresh failed", logging.DEBUG, error=str(exc))
