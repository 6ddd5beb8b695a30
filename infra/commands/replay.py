"""`keel replay`: rebuild a partition from keel.orders and audit what the engine published.

    keel replay --partition 0                          # whole log, print the state hash
    keel replay --partition 0 --from 100000 --to 200000 --compare

--compare checks the replayed events byte-for-byte against keel.events and the state
hash at every engine snapshot in the range. Exit 0 when everything matches, 1 with the
first difference printed, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition", type=int, required=True, help="keel.orders partition")
    parser.add_argument("--from", dest="start", type=int, default=0,
                        help="first input offset whose events are compared (default 0)")
    parser.add_argument("--to", dest="end", type=int, default=None,
                        help="input offset to stop before (default: the engine's committed offset)")
    parser.add_argument("--compare", action="store_true",
                        help="compare events and state hashes with what the engine published")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.service.replay import replay

    try:
        markets = load_markets(settings.markets_file)
    except MarketsConfigError as exc:
        print(f"keel replay: {exc}")
        return 2
    if not 0 <= args.partition < markets.partitions or args.start < 0 or (
            args.end is not None and args.end < args.start):
        print("keel replay: need 0 <= partition < partitions and 0 <= --from <= --to")
        return 2
    report = replay(settings, markets, args.partition, args.start, args.end, args.compare,
                    progress=not args.no_progress)
    if args.json:
        print(json.dumps({**vars(report), "ok": report.ok}))
    else:
        print(f"partition {report.partition}: replayed input offsets "
              f"{report.loaded_snapshot or 0}..{report.end} "
              f"(from snapshot at {report.loaded_snapshot})" if report.loaded_snapshot is not None
              else f"partition {report.partition}: replayed input offsets 0..{report.end}")
        print(f"events in range: {report.events}; state hash: {report.state_hash}")
        for note in report.notes:
            print(f"note: {note}")
        if args.compare:
            print(f"snapshots checked: {report.snapshots_checked}")
            print("MATCH" if report.ok else f"MISMATCH: {report.mismatch}")
    return 0 if report.ok else 1
