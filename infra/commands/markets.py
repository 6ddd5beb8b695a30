"""`keel markets`: validate the markets config and show it; non-zero on an invalid file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", type=Path, default=None,
                        help="markets file to check (default: KEEL_MARKETS_FILE or the built-in)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    path = args.file or settings.markets_file
    try:
        config = load_markets(path)
    except MarketsConfigError as exc:
        print(f"keel markets: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: {len(config.markets)} markets on {config.partitions} partitions, "
          f"fee account {config.fee_account}")
    print(f"{'pair':<10} {'base':<6} {'quote':<6} {'tick':>10} {'lot':>12} {'min notional':>13} "
          f"{'maker':>7} {'taker':>7} {'part':>4}  trading")
    for m in sorted(config.markets.values(), key=lambda m: (m.partition, m.pair)):
        print(f"{m.pair:<10} {m.base:<6} {m.quote:<6} {m.tick_size:>10} {m.lot_size:>12} "
              f"{m.min_notional:>13} {m.maker_fee_ppm / 10_000:>6}% {m.taker_fee_ppm / 10_000:>6}% "
              f"{m.partition:>4}  {'yes' if m.trading else 'no'}")
    return 0
