"""The Prometheus endpoint every Keel process serves on loopback."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from infra.logs import event

log = logging.getLogger("keel.metrics")


def serve_metrics(registry: CollectorRegistry, port: int | None) -> int | None:
    """Start the HTTP endpoint for `registry`; a busy port is logged, never fatal."""
    if not port:
        return None
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        event(log, "metrics port unavailable", logging.WARNING, port=port, error=str(exc))
        return None
    return port
