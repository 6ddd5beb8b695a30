"""Prometheus counters of a streams worker; served on its metrics port (also its health URL)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from infra.metrics import serve_metrics


class StreamMetrics:
    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry()
        self.inputs = Counter(f"keel_{role}_records", "records consumed and applied",
                              registry=self.registry)
        self.outputs = Counter(f"keel_{role}_outputs", "records produced",
                               registry=self.registry)
        self.dead_letters = Counter(f"keel_{role}_dead_letters", "records sent to keel.dlq",
                                    registry=self.registry)

    def serve(self, port: int | None) -> int | None:
        """The port served, or None (no port asked, or busy: logged, as every Keel
        process does; the supervisor's health check then says the worker is not up)."""
        return serve_metrics(self.registry, port)
