"""`keel streams ROLE`: run one Faust streams worker.

    keel streams accounts      # risk gate, funding, settlement application (per user)
    keel streams settlement    # engine events -> per-user settlement records
    keel streams marketdata    # 24 h tickers and 1-minute candles per pair

Start more workers of a role to share its partitions. Exit codes: 0 stopped by
SIGTERM/SIGINT, 2 bad config, 1 the worker failed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings

ROLES = ("accounts", "settlement", "marketdata")
METRICS_OFFSET = {"accounts": 30, "settlement": 31, "marketdata": 32}


def streams_processes(settings: Settings) -> list:
    """Supervisor specs: one worker per role, healthy while its metrics port answers."""
    from infra.processes import keel_process

    return [keel_process(f"streams-{role}", "streams", role, "--metrics-port",
                         str(port), metrics_port=port, depends_on=("kafka",))
            for role in ROLES
            for port in [settings.metrics_port_base + METRICS_OFFSET[role]]]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default: metrics base + 30/31/32 by role; "
                             "0 disables)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        markets = load_markets(settings.markets_file)
    except MarketsConfigError as exc:
        print(f"keel streams: {exc}", file=sys.stderr)
        return 2
    if not ensure_topics(settings, markets):
        return 1

    from streams.app import Worker
    from streams.app import configure as configure_app
    from streams.metrics import StreamMetrics

    app = configure_app(args.role, settings)
    metrics = StreamMetrics(args.role)
    port = args.metrics_port
    metrics.serve(settings.metrics_port_base + METRICS_OFFSET[args.role] if port is None else port)
    importlib.import_module(f"streams.{args.role}").register(settings, markets, metrics)
    from streams.starving import watch

    watch(app)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def ensure_topics(settings: Settings, markets) -> bool:
    """Keel's topics with their configured partitions, before Faust subscribes: a topic
    auto-created by the broker on first use would get the broker's default count, and
    Faust refuses a table whose changelog and source differ."""
    from infra import topics
    from infra.kafka import admin_client

    try:
        outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                        topics.plan(settings, markets))
    except Exception as exc:  # the broker is down: say so plainly, let the supervisor retry
        print(f"keel streams: broker {settings.bootstrap}: {exc}", file=sys.stderr)
        return False
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        print(f"keel streams: {o.name}: {o.status} {o.detail}", file=sys.stderr)
    return not bad
