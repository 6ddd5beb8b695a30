"""Every process `keel up` runs, in one place. Later issues add their entry here.

To register a Keel process, append a `keel_process(...)` to `keel_processes` below:

    keel_process("engine", "engine", "--partitions", "all", metrics_port=ports.next())

It then runs as `python -m infra.cli engine --partitions all` in its own process group,
logs to <data_dir>/logs/engine.log, is restarted with backoff when it dies, starts only
after the services it depends on are healthy and counts as healthy when its health URL
answers 2xx (or, with no health URL, while it stays alive).
"""
from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, field

from infra.clickhouse import owner_endpoint
from infra.health import HealthCheck
from infra.settings import Settings

SERVICES = ("kafka", "postgres", "clickhouse")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health: HealthCheck | None = None        # None: healthy while it stays up
    depends_on: tuple[str, ...] = ()
    service: bool = False                    # an embedded service (stopped last)
    stop_signal: int = signal.SIGTERM
    stop_grace: float = 5.0                  # seconds before SIGKILL


def keel_argv(*args: str) -> tuple[str, ...]:
    """argv for a `keel <subcommand>` child, with this interpreter (venv-safe)."""
    return (sys.executable, "-m", "infra.cli", *args)


def embedded_services(settings: Settings) -> list[ProcessSpec]:
    specs = []
    if settings.embedded_kafka:
        specs.append(ProcessSpec("kafka", keel_argv("services", "kafka"),
                                 health=HealthCheck("kafka", settings.bootstrap), service=True))
    if settings.embedded_postgres:
        specs.append(ProcessSpec("postgres", keel_argv("services", "postgres"),
                                 health=HealthCheck("postgres", settings.postgres_dsn),
                                 service=True, stop_grace=10.0))
    if settings.embedded_clickhouse:
        # The chDB owner is the ClickHouse sink: one process may open the data dir.
        specs.append(ProcessSpec("clickhouse", keel_argv("sink", "clickhouse"),
                                 health=HealthCheck("http", owner_endpoint(settings) + "/ping"),
                                 service=True))
    return specs


def keel_process(name: str, *args: str, metrics_port: int | None = None,
                 depends_on: tuple[str, ...] = SERVICES, **kwargs) -> ProcessSpec:
    health = (HealthCheck("http", f"http://127.0.0.1:{metrics_port}/metrics")
              if metrics_port is not None else None)
    return ProcessSpec(name, keel_argv(*args), health=health, depends_on=depends_on, **kwargs)


def keel_processes(settings: Settings, demo: bool) -> list[ProcessSpec]:
    """The Keel processes proper (engine, accounts, settlement, market data, sinks,
    gateway, demo traffic). Each later issue appends its own entry here."""
    specs: list[ProcessSpec] = []
    from infra.commands.engine import engine_processes
    specs += engine_processes(settings)
    from infra.commands.streams import streams_processes
    specs += streams_processes(settings)
    from infra.commands.sink import sink_processes
    specs += sink_processes(settings)
    from infra.commands.gateway import gateway_processes
    specs += gateway_processes(settings, demo)
    return specs + extra_processes(settings)


def extra_processes(settings: Settings) -> list[ProcessSpec]:
    """Operator-declared sidecars: KEEL_EXTRA_PROCESSES='[{"name": .., "argv": [..]}]'.

    Also how tests put a tiny process under supervision without touching the registry.
    """
    raw = settings.extra.get("KEEL_EXTRA_PROCESSES", "").strip()
    if not raw:
        return []
    specs = []
    for item in json.loads(raw):
        specs.append(ProcessSpec(
            item["name"], tuple(item["argv"]), env=dict(item.get("env", {})),
            health=HealthCheck("http", item["health_url"]) if item.get("health_url") else None,
            depends_on=tuple(item.get("depends_on", SERVICES))))
    return specs


def all_processes(settings: Settings, demo: bool = False) -> list[ProcessSpec]:
    specs = embedded_services(settings) + keel_processes(settings, demo)
    names = [s.name for s in specs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"process names must be unique: {sorted(duplicated)}")
    return specs
