"""`keel services <name>`: run one embedded service in the foreground until SIGTERM.

`keel up` runs each embedded service through this command, so services are supervised,
logged and restarted exactly like Keel's own processes.
"""
from __future__ import annotations

import argparse
import importlib

from infra.settings import Settings

SERVICES = {"kafka": "infra.embedded.kafka", "postgres": "infra.embedded.postgres",
            "clickhouse": "infra.embedded.clickhouse"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", choices=sorted(SERVICES))


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return importlib.import_module(SERVICES[args.service]).run(settings)
