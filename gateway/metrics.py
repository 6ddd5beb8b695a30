"""Prometheus metrics of one gateway, in its own registry (served at /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("exchange_http_request_duration_seconds",
                                 "REST request latency by route", ["route", "method"],
                                 buckets=BUCKETS, registry=r)
        self.responses = Counter("exchange_http_responses_total", "REST responses by status",
                                 ["route", "status"], registry=r)
        self.ws_active = Gauge("exchange_ws_connections_active",
                               "Open WebSocket connections", registry=r)
        self.ws_sent = Counter("exchange_ws_messages_sent_total",
                               "Stream messages queued to WebSocket clients", ["pair"],
                               registry=r)
        self.ws_dropped = Counter("exchange_ws_clients_dropped_total",
                                  "WebSocket clients dropped for falling behind", registry=r)
        self.rate_limited = Counter("exchange_rate_limited_total",
                                    "Requests refused by a rate limit", ["scope"], registry=r)
        self.order_timeouts = Counter("exchange_order_timeouts_total",
                                      "Order requests answered -1007 (no reply in time)",
                                      registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
