"""`keel sink postgres|clickhouse`: load keel.events (and keel.depth) into the stores.

Under `keel up` the PostgreSQL sink is its own supervised process. The ClickHouse sink
on embedded chDB *is* the chDB owner (the `clickhouse` service runs `keel sink
clickhouse`: one process may open the data dir), so it is registered as a Keel process
only for a ClickHouse server URL.
"""
from __future__ import annotations

import argparse

from infra.settings import Settings

METRICS_OFFSET = {"postgres": 40, "clickhouse": 41}   # beside engine (10..) and streams (30..)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", choices=("postgres", "clickhouse"))
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on 127.0.0.1:PORT "
                             "(default: KEEL_METRICS_PORT_BASE, one process per container)")
    from sinks import BATCH

    parser.add_argument("--batch", type=int, default=None,
                        help="most records per store transaction (default: postgres "
                             f"{BATCH['postgres']}, clickhouse {BATCH['clickhouse']})")


def sink_processes(settings: Settings) -> list:
    """Supervisor specs for the sinks (see the module docstring for ClickHouse)."""
    from infra.processes import keel_process

    specs = []
    stores = ["postgres"] + ([] if settings.embedded_clickhouse else ["clickhouse"])
    for store in stores:
        port = settings.metrics_port_base + METRICS_OFFSET[store]
        specs.append(keel_process(f"sink-{store}", "sink", store, "--metrics-port", str(port),
                                  metrics_port=port, depends_on=("kafka", store)))
    return specs


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sinks import BATCH, service

    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port_base
    batch = args.batch if args.batch is not None else BATCH[args.store]
    if args.store == "postgres":
        return service.run_postgres(settings, port, batch)
    return service.run_clickhouse(settings, port, batch)
