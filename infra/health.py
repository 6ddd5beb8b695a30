"""Health checks: one question per component, answered within a timeout, never raising."""
from __future__ import annotations

import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@dataclass(frozen=True)
class HealthCheck:
    """What to ask and where; serialisable into the state file for `keel status`."""
    kind: str               # kafka | postgres | clickhouse | http
    target: str             # bootstrap servers, DSN, chdb/http DSN or URL

    def run(self, timeout: float = 2.0) -> Health:
        probe = PROBES.get(self.kind)
        if probe is None:
            return Health(False, f"unknown health check {self.kind!r}")
        try:
            return probe(self.target, timeout)
        except Exception as exc:  # a probe's failure is an answer, not a crash
            return Health(False, f"{type(exc).__name__}: {exc}".strip())

    def to_json(self) -> dict:
        return {"kind": self.kind, "target": self.target}

    @classmethod
    def from_json(cls, data: dict | None) -> HealthCheck | None:
        return cls(data["kind"], data["target"]) if data else None


def kafka(bootstrap: str, timeout: float) -> Health:
    from confluent_kafka.admin import AdminClient

    # log_level 0: a broker that is down is the answer, not a stream of librdkafka errors.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000))})
    metadata = admin.list_topics(timeout=timeout)
    return Health(True, f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics")


def postgres(dsn: str, timeout: float) -> Health:
    import psycopg

    with psycopg.connect(dsn, connect_timeout=max(1, int(timeout))) as conn:
        version = conn.execute("SELECT 1, current_setting('server_version')").fetchone()
    return Health(True, f"PostgreSQL {version[1]}")


def clickhouse(dsn: str, timeout: float) -> Health:
    """A ClickHouse server by URL (never a chdb:// path: that would open the owner's dir)."""
    if dsn.startswith("chdb:"):
        return Health(False, "chdb:// is checked through its owner's /ping, not opened")
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=dsn, connect_timeout=timeout,
                                           send_receive_timeout=timeout)
    try:
        client.query("SELECT 1")
        return Health(True, f"ClickHouse {client.server_version}")
    finally:
        client.close()


def http(url: str, timeout: float) -> Health:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return Health(200 <= response.status < 300, f"HTTP {response.status}")


PROBES = {"kafka": kafka, "postgres": postgres, "clickhouse": clickhouse, "http": http}
