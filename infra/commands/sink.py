"""`keel sink postgres|clickhouse`: load keel.events (and keel.depth) into the stores."""
from __future__ import annotations

import argparse

from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", choices=("postgres", "clickhouse"))
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on 127.0.0.1:PORT")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="most records per store transaction")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sinks import service

    if args.store == "postgres":
        return service.run_postgres(settings, args.metrics_port, args.batch)
    return service.run_clickhouse(settings, args.metrics_port, args.batch)
