"""`keel engine`: run the matching engine for some keel.orders partitions.

    keel engine --partitions 0,2            # primary unless a live primary is beating
    keel engine --partitions all --standby  # warm standby, takes over after ~1 s of silence

Exit codes: 0 stopped by SIGTERM/SIGINT (the open batch commits, then a checkpoint
snapshot), 1 Kafka unreachable, 2 bad arguments, config or topics, 3 fenced by another
instance (restart me: I come back as a standby).

Tuning (environment): KEEL_ENGINE_MAX_BATCH (5000 records per transaction),
KEEL_ENGINE_MAX_BATCH_MS (1: how long a batch may wait to fill, only while more records are
already at the broker), KEEL_ENGINE_FETCH_WAIT_MS (5: the live fetch wait; tansu holds a
fetch that long even when an order arrives) / _CATCH_UP_WAIT_MS (100: while recovering or over
1,000 records behind; small-batch backlogs read far faster), KEEL_ENGINE_SNAPSHOT_EVERY
(200000 records) / _SNAPSHOT_EVERY_S (60), KEEL_ENGINE_SNAPSHOT_CHUNK_BYTES (512 KiB),
KEEL_ENGINE_DEPTH_LEVELS (20) / _DEPTH_SNAPSHOT_EVERY (100 diffs) / _DEPTH_SNAPSHOT_S (5),
KEEL_ENGINE_HEARTBEAT_MS (100), KEEL_ENGINE_TAKEOVER_MS (1000), KEEL_ENGINE_LINGER_MS (0),
KEEL_ENGINE_IMPL (auto | c | python). Under `keel up`: KEEL_ENGINE_GROUPS ("0,1;2": one
primary per group) and KEEL_ENGINE_STANDBY=1 (a standby per group).
"""
from __future__ import annotations

import argparse

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings

METRICS_OFFSET = 10          # engine metrics: base + 10 + first partition (+ 50 as standby)


def parse_partitions(text: str, count: int) -> list[int]:
    if text.strip() == "all":
        return list(range(count))
    try:
        parts = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--partitions {text!r}: a list like 0,2 or 'all'") from None
    bad = [p for p in parts if not 0 <= p < count]
    if not parts or bad:
        raise argparse.ArgumentTypeError(
            f"--partitions {text!r}: the markets config has partitions 0..{count - 1}")
    return parts


def metrics_port(settings: Settings, first_partition: int, standby: bool) -> int:
    return settings.metrics_port_base + METRICS_OFFSET + first_partition + (50 if standby else 0)


def partition_groups(text: str | None, count: int) -> list[list[int]]:
    """KEEL_ENGINE_GROUPS="0,1;2" -> [[0, 1], [2]]; unset -> one group with every partition."""
    if not text or not text.strip():
        return [list(range(count))]
    groups = [parse_partitions(g, count) for g in text.split(";") if g.strip()]
    flat = [p for g in groups for p in g]
    if sorted(flat) != list(range(count)):
        raise ValueError(f"KEEL_ENGINE_GROUPS={text!r} must cover partitions 0..{count - 1} "
                         "exactly once")
    return groups


def engine_processes(settings: Settings) -> list:
    """Supervisor specs: one primary per partition group (KEEL_ENGINE_GROUPS) and, with
    KEEL_ENGINE_STANDBY=1, a warm standby for each. A restarted primary that finds a live
    one beating comes back as a standby, so restarts never ping-pong."""
    from infra.processes import keel_process

    markets = load_markets(settings.markets_file)
    groups = partition_groups(settings.extra.get("KEEL_ENGINE_GROUPS"), markets.partitions)
    standby = settings.extra.get("KEEL_ENGINE_STANDBY", "").lower() in ("1", "true", "yes")
    specs = []
    for group in groups:
        name = "engine" if len(groups) == 1 else "engine-" + "-".join(map(str, group))
        parts = ",".join(map(str, group))
        for role in ((False, True) if standby else (False,)):
            port = metrics_port(settings, group[0], role)
            specs.append(keel_process(
                name + ("-standby" if role else ""), "engine", "--partitions", parts,
                *(("--standby",) if role else ()), "--metrics-port", str(port),
                metrics_port=port, depends_on=("kafka",)))
    return specs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", default="all",
                        help="keel.orders partitions to own, e.g. 0,2 (default: all)")
    parser.add_argument("--standby", action="store_true",
                        help="start as a warm standby that takes over when the primary is silent")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default: metrics base + 10 + first partition, "
                             "+50 for a standby; 0 disables)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaException

    from engine.service.runner import EngineService
    from engine.service.tools import TopicsNotReady

    try:
        markets = load_markets(settings.markets_file)
        partitions = parse_partitions(args.partitions, markets.partitions)
    except (MarketsConfigError, argparse.ArgumentTypeError) as exc:
        print(f"keel engine: {exc}")
        return 2
    service = EngineService(settings, markets, partitions, standby=args.standby)
    port = args.metrics_port
    if port is None:
        port = metrics_port(settings, partitions[0], args.standby)
    service.metrics.serve(port)
    try:
        return service.run()
    except TopicsNotReady as exc:
        print(f"keel engine: {exc}")
        return 2
    except KafkaException as exc:
        # The broker went away or refused us: exit and let the supervisor restart us.
        print(f"keel engine: Kafka error: {exc}")
        return 1
