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
        self._routes: dict[tuple[str, str], RouteMetrics] = {}

    def for_route(self, route: str, method: str) -> RouteMetrics:
        """The route's own series, looked up once: `labels()` takes a lock and builds a key
        on every call, which a cached public request would otherwise pay twice."""
        found = self._routes.get((route, method))
        if found is None:
            found = self._routes[(route, method)] = RouteMetrics(self, route, method)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RouteMetrics:
    __slots__ = ("latency", "route", "responses", "by_status")

    def __init__(self, metrics: GatewayMetrics, route: str, method: str) -> None:
        self.latency = metrics.latency.labels(route, method)
        self.route = route
        self.responses = metrics.responses
        self.by_status: dict[int, object] = {}

    def observe(self, seconds: float, status: int) -> None:
        self.latency.observe(seconds)
        counter = self.by_status.get(status)
        if counter is None:
            counter = self.by_status[status] = self.responses.labels(self.route, str(status))
        counter.inc()
