"""The metric families Keel's code registers, read from the registries themselves (no
server needed): what docs/metrics.md must list and what alert rules may name."""
from __future__ import annotations

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                              "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created")}
ROLES = ("accounts", "settlement", "marketdata")


def registries():
    from engine.service.metrics import EngineMetrics
    from gateway.metrics import GatewayMetrics
    from sinks.metrics import SinkMetrics
    from streams.metrics import StreamMetrics

    yield "engine", EngineMetrics().registry
    yield "gateway", GatewayMetrics().registry
    yield "sink", SinkMetrics("postgres").registry
    for role in ROLES:
        yield role, StreamMetrics(role).registry


def families() -> dict[str, str]:
    """family name -> type, over every process."""
    out = {}
    for _process, registry in registries():
        for family in registry.collect():
            out[family.name] = family.type
    return out


def sample_names() -> set[str]:
    """Every series name a scrape can show (counter `_total`, histogram `_bucket`, ...)."""
    return {name + suffix for name, kind in families().items() for suffix in SUFFIXES[kind]}


EXTERNAL = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes",
            "probe_ssl_earliest_cert_expiry"}
