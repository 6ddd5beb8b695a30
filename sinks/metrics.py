"""Prometheus metrics of a sink (one registry per sink, served on its own port or, for the
embedded ClickHouse sink, on the chDB owner's /metrics)."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.metrics import serve_metrics

log = logging.getLogger(__name__)

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SinkMetrics:
    def __init__(self, sink: str, registry: CollectorRegistry | None = None) -> None:
        self.sink = sink
        self.registry = r = registry or CollectorRegistry()
        self.lag = Gauge("keel_sink_lag_records", "High watermark minus position, per partition",
                         ["sink", "topic", "partition"], registry=r)
        self.event_lag = Histogram("keel_sink_event_lag_seconds",
                                   "Store commit time minus the newest event time of the batch",
                                   ["sink"], buckets=SECONDS, registry=r)
        self.rows = Counter("keel_sink_rows", "Rows written to the store", ["sink", "table"],
                            registry=r)
        self.replayed = Counter("keel_sink_replayed_events",
                                "Events dropped as already stored (replay after a crash)",
                                ["sink"], registry=r)
        self.batch_seconds = Histogram("keel_sink_batch_seconds", "Store write of one batch",
                                       ["sink"], buckets=SECONDS, registry=r)
        self.retries = Counter("keel_sink_retries", "Store writes retried after an outage",
                               ["sink"], registry=r)
        self.store_up = Gauge("keel_sink_store_up", "1 when the last store write succeeded",
                              ["sink"], registry=r)
        self.dead_letters = Counter("keel_sink_dead_letters", "Records sent to keel.dlq",
                                    ["sink", "code"], registry=r)
        self.seq_gaps = Counter("keel_sink_seq_gaps", "Pairs whose seq jumped", ["sink"],
                                registry=r)

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        for (topic, partition), value in lag.items():
            self.lag.labels(self.sink, topic, str(partition)).set(value)

    def serve(self, port: int | None) -> int | None:
        return serve_metrics(self.registry, port)
