"""The loop every sink runs: poll a batch, decode it (bad records to keel.dlq), write it to
the store (retrying with backoff while the store is away, position kept), and only then
commit the offsets. Delivery is at-least-once; the stores make it exactly-once by
dropping what they already hold.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.logs import event
from schemas.codec import CodecError, RegistryUnavailable
from sinks.dlq import DeadLetters
from sinks.metrics import SinkMetrics
from sinks.source import Source

log = logging.getLogger(__name__)

LAG_EVERY = 1.0          # seconds between lag metric refreshes (each asks the broker)


@dataclass(frozen=True)
class Backoff:
    first: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.first * (2 ** attempt))


class SinkLoop:
    def __init__(self, name: str, source: Source, decode: Callable[[object], object],
                 write: Callable[[list], object], transient: tuple[type[BaseException], ...],
                 dead_letters: DeadLetters, metrics: SinkMetrics, stop: threading.Event,
                 backoff: Backoff = Backoff(),
                 on_written: Callable[[object, float], None] | None = None) -> None:
        self.name = name
        self.source = source
        self.decode = decode                 # message -> item for write(); CodecError = dead
        self.write = write                   # items -> a report with .max_ts (ms)
        self.transient = transient + (RegistryUnavailable,)
        self.dlq = dead_letters
        self.metrics = metrics
        self.stop = stop
        self.backoff = backoff
        self.on_written = on_written
        self.batches = 0
        self._lag_at = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()

    def step(self) -> bool:
        """One batch end to end; True when something was written and committed."""
        msgs = self.source.poll()
        self._refresh_lag()
        if not msgs:
            return False
        generation = self.source.generation
        decoded = self._retrying(lambda: self._decode(msgs), generation)
        if decoded is None:
            return False                     # revoked or stopping: the next owner replays
        items, dead = decoded
        started = time.monotonic()
        report = self._retrying(lambda: self.write(items), generation)
        if report is None:
            return False
        self.metrics.batch_seconds.labels(self.name).observe(time.monotonic() - started)
        for msg, error in dead:
            self.dlq.send(msg, error)
            self.metrics.dead_letters.labels(self.name, str(error.code)).inc()
        if self.dlq.pending:                 # ours, and any the store set aside
            self.dlq.flush()
        self.source.commit(msgs)
        self.batches += 1
        self._count(report)
        max_ts = getattr(report, "max_ts", 0)
        if max_ts:
            self.metrics.event_lag.labels(self.name).observe(max(0.0, time.time() - max_ts / 1000))
        if self.on_written is not None:
            self.on_written(report, time.time())
        return True

    def _count(self, report: object) -> None:
        for table in ("trades", "orders", "depth_rows"):
            n = getattr(report, table, 0)
            if n:
                self.metrics.rows.labels(self.name, table.removesuffix("_rows")).inc(n)
        if getattr(report, "replayed", 0):
            self.metrics.replayed.labels(self.name).inc(report.replayed)
        if getattr(report, "gaps", 0):
            self.metrics.seq_gaps.labels(self.name).inc(report.gaps)

    def _decode(self, msgs: list) -> tuple[list, list]:
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

    def _retrying(self, attempt: Callable[[], object], generation: int):
        """attempt() until it succeeds; None when the partitions were revoked meanwhile or
        the sink is stopping (the batch is then left for the next owner)."""
        failures = 0
        while True:
            try:
                result = attempt()
                self.metrics.store_up.labels(self.name).set(1)
                return result
            except self.transient as exc:
                failures += 1
                self.metrics.retries.labels(self.name).inc()
                self.metrics.store_up.labels(self.name).set(0)
                delay = self.backoff.delay(failures - 1)
                event(log, "store unavailable, retrying", logging.WARNING, sink=self.name,
                      attempt=failures, delay_s=round(delay, 2),
                      error=f"{type(exc).__name__}: {exc}"[:300])
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
