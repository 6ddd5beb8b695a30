"""`keel topics create|list|describe`: Keel's topic catalog on the configured broker."""
from __future__ import annotations

import argparse
import sys

from engine.markets import MarketsConfigError, load_markets
from infra import topics
from infra.kafka import admin_client
from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("create", "list", "describe"),
                        help="create: create missing topics (idempotent); list: what the "
                        "broker has; describe: the catalog and how the broker compares")
    parser.add_argument("--timeout", type=float, default=10.0)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        planned = topics.plan(settings, load_markets(settings.markets_file))
    except (MarketsConfigError, ValueError) as exc:
        print(f"keel topics: {exc}", file=sys.stderr)
        return 1
    admin = admin_client(settings, log_level=0)
    try:
        if args.action == "create":
            outcomes = topics.ensure_topics(admin, planned, args.timeout)
            for o in outcomes:
                print(f"{o.name:<24} {o.status:<9} {o.detail}")
            return 0 if all(o.ok for o in outcomes) else 1
        have = topics.existing_partitions(admin, args.timeout)
    except Exception as exc:  # the broker is down or refused: say so plainly
        print(f"keel topics: broker {settings.bootstrap}: {exc}", file=sys.stderr)
        return 1
    if args.action == "list":
        for name in sorted(have):
            if not name.startswith("__"):
                print(f"{name:<24} {have[name]} partitions")
        return 0
    print(f"{'topic':<24} {'key':<17} {'partitioned by':<17} {'want':>4} {'have':>4}  policy")
    ok = True
    for t in planned:
        actual = have.get(t.name)
        ok &= actual == t.partitions
        mark = "-" if actual is None else str(actual)
        flag = "" if actual == t.partitions else ("  MISSING" if actual is None else "  MISMATCH")
        print(f"{t.name:<24} {t.spec.key:<17} {t.spec.partitioned_by.value:<17} "
              f"{t.partitions:>4} {mark:>4}  {t.config['cleanup.policy']}{flag}")
    return 0 if ok else 1
