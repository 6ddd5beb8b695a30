"""Prometheus metrics of the engine service, served on its own HTTP port."""
from __future__ import annotations

import logging
import threading
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily

from infra.metrics import serve_metrics

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class BatchHistogram:
    """A labelled histogram that takes `n` observations of one value in O(1).

    Every record of a batch shares its consume-to-commit latency, so the engine records
    a batch at once instead of paying prometheus-client's per-observation cost per order.
    """

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name, self.doc, self.labelnames, self.buckets = name, doc, labelnames, buckets
        self._data: dict[tuple, list] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, labels: tuple, value: float, n: int = 1) -> None:
        with self._lock:
            entry = self._data.get(labels)
            if entry is None:
                entry = self._data[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
            entry[0][bisect_left(self.buckets, value)] += n
            entry[1] += value * n
            entry[2] += n

    def collect(self):
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        with self._lock:
            data = [(k, list(v[0]), v[1]) for k, v in self._data.items()]
        for labels, counts, total in data:
            cumulative, running = [], 0
            for bound, count in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(labels), cumulative, total)
        yield family


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.order_latency = BatchHistogram(
            "exchange_order_latency_seconds", "Consume to transaction commit, per input record",
            ("pair", "type"), LATENCY_BUCKETS, r)
        self.orders = Counter("exchange_orders_processed", "Input commands applied (primary)",
                              ["pair"], registry=r)
        self.depth = Gauge("exchange_order_book_depth", "Resting quantity in the top levels (lots)",
                           ["pair", "side"], registry=r)
        self.lag = Gauge("exchange_engine_consumer_lag", "keel.orders high watermark - position",
                         ["partition"], registry=r)
        self.commit_time = Histogram(
            "exchange_engine_commit_seconds",
            "End of a batch's matching to its transaction's commit (offsets went during it)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("exchange_engine_batch_records", "Records per transaction",
                               buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000), registry=r)
        self.snapshot_bytes = Gauge("exchange_engine_snapshot_bytes",
                                    "Size of the last engine snapshot", ["partition"], registry=r)
        self.dead_letters = Counter("exchange_engine_dead_letters", "Records sent to the DLQ",
                                    ["partition", "code"], registry=r)
        self.duplicates = Counter(
            "exchange_engine_duplicate_commands",
            "Commands dropped as copies of one already seen (engine.service.duplicates)",
            ["partition"], registry=r)
        self.role = Gauge("exchange_engine_primary", "1 while this process is the partition's primary",
                          ["partition"], registry=r)
        self.recovery = Gauge("exchange_engine_recovery_seconds", "Last start-up/takeover time",
                              ["partition"], registry=r)

    def serve(self, port: int | None) -> int | None:
        return serve_metrics(self.registry, port)
