"""The one `keel` command. Each subcommand lives in its own module, imported only when used.

A subcommand module exposes `configure(parser)` to add its arguments and
`run(args, settings) -> int` returning the process exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from infra.logs import setup_logging
from infra.settings import Settings

# name -> (module, one-line help). Later issues register their processes here.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("infra.commands.up", "start the embedded stack and every Keel process, supervised"),
    "status": ("infra.commands.status", "health of every component; non-zero unless all healthy"),
    "topics": ("infra.commands.topics", "create, list or describe Keel's topics"),
    "markets": ("infra.commands.markets", "validate and show the markets config"),
    "migrate": ("infra.commands.migrate", "apply PostgreSQL migrations"),
    "services": ("infra.commands.services", "run one embedded service in the foreground"),
    "sink": ("infra.commands.sink", "load keel.events/keel.depth into PostgreSQL or ClickHouse"),
    "sql": ("infra.commands.sql", "run a read-only SQL query on ClickHouse (table, csv or json)"),
    "engine": ("infra.commands.engine", "run the matching engine for some keel.orders partitions"),
    "replay": ("infra.commands.replay", "rebuild a partition from keel.orders and compare with keel.events"),
    "streams": ("infra.commands.streams", "run a Faust streams worker: accounts, settlement or marketdata"),
    "gateway": ("infra.commands.gateway", "run the Binance-compatible REST/WebSocket gateway"),
    "users": ("infra.commands.users", "create gateway users and API keys"),
    "demo": ("infra.commands.demo", "demo traders: a market maker and takers trading through the gateway"),
    "top": ("infra.commands.top", "live terminal view of the running stack, from its metrics endpoints"),
    "loadgen": ("infra.commands.loadgen", "drive the gateway with a realistic trader mix: baseline, ramp, spike, soak"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keel", description="Keel exchange backbone")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(_missing=True)
            continue
        module.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        parser.error(f"command {args.command!r} is not available in this build")
    settings = Settings.from_env()
    setup_logging(settings.log_level, process=args.command)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
