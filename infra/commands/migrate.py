"""`keel migrate`: apply pending PostgreSQL migrations (idempotent)."""
from __future__ import annotations

import argparse
import sys

import psycopg

from infra.migrate import MigrationError, discover
from infra.provision import apply_migrations
from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="only list the migration files")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.list:
            for m in discover():
                print(f"{m.version:04d}  {m.path}")
            return 0
        done = apply_migrations(settings)
    except (MigrationError, psycopg.Error) as exc:
        print(f"keel migrate: {exc}", file=sys.stderr)
        return 1
    for m in done:
        print(f"applied {m.path.name}")
    print("schema up to date" if not done else f"{len(done)} migration(s) applied")
    return 0
