"""Wiring of the sink processes: settings -> clients -> loop, until SIGTERM.

`keel sink postgres` and `keel sink clickhouse` (infra/commands/sink.py) land here. The
embedded ClickHouse sink also owns the chDB dir and serves read-only queries for
`keel sql` (infra/embedded/clickhouse.py hosts it).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from infra.logs import event
from infra.settings import Settings
from schemas.codec import Codec
from sinks import BATCH
from sinks.dlq import DeadLetters
from sinks.loop import SinkLoop
from sinks.metrics import SinkMetrics
from sinks.source import Source

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005        # seconds (see clickhouse_loop and postgres_loop)
LINGER = 1.0                    # seconds a ClickHouse poll may wait for a whole batch


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    A batch's numpy arrays are megabytes each: above glibc's default thresholds each was
    mapped fresh and unmapped when freed, so the next batch's arrays faulted every page
    in again (zeroed by the kernel). bench/sinks.py (sink process, rusage over the drain,
    load 3-4): ClickHouse 68k -> 48k minor faults, system CPU 0.29 -> 0.19 s per 200k depth
    rows; PostgreSQL 37k -> 25k faults, 0.17 -> 0.11 s per 278k events. A 16k-record
    level read on fresh arrays: 16 -> 7 ms. The process keeps up to TRIM of freed heap.
    Anything but glibc (no mallopt, or one that ignores these) is left as it is."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)     # glibc's largest: bigger blocks still mmap
    mallopt(_M_TRIM_THRESHOLD, TRIM)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc's malloc.h
TRIM = 256 << 20


def group(settings: Settings, store: str) -> str:
    """keel-sink-postgres / keel-sink-clickhouse under the default topic prefix."""
    return f"{settings.topic_prefix.rstrip('.')}-sink-{store}"


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def postgres_loop(settings: Settings, stop: threading.Event, metrics: SinkMetrics,
                  max_records: int = BATCH["postgres"]):
    """(loop, store): keel.events -> trades and orders, keel.settlements -> ledger entries,
    keel.balances -> balances, in one transaction per batch. The caller opens nothing else."""
    from sinks.postgres import TRANSIENT, PostgresStore

    codec = Codec.from_settings(settings)
    # The writers (COPY streams, each resumed when its socket drains) wait for the GIL
    # behind the polling thread's numpy work, up to 5 ms a time by default, while their
    # backend idles: bench/sinks.py --only postgres, 4 alternating pairs (load 1-2):
    # 34.1/26.6/23.8/30.2k trades/s at 0.5 ms against 25.1/23.6/23.3/29.0k at 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    keep_freed_memory()
    settlements, balances = settings.topic("settlements"), settings.topic("balances")
    # Connections writing a batch side by side (by pair); one per core PostgreSQL may use.
    writers = int(settings.extra.get("KEEL_SINK_POSTGRES_WRITERS", "2"))
    depth = 2                       # batches of disjoint partitions written side by side
    store = PostgresStore(settings.postgres_dsn, writers=writers, batches=depth, codec=codec,
                          settlements_topic=settlements, balances_topic=balances)
    store.open()
    source = Source(settings, group(settings, "postgres"),
                    [settings.topic("events"), settlements, balances],
                    client_id="sink-postgres", max_records=max_records, eager=True)
    loop = SinkLoop("postgres", source, None, store.write, TRANSIENT,
                    DeadLetters(settings, codec, "postgres-sink"), metrics, stop,
                    prepare=store.prepare, pipeline=True, depth=depth)
    return loop, store


def run_postgres(settings: Settings, metrics_port: int | None, max_records: int) -> int:
    stop = stop_on_signals()
    metrics = SinkMetrics("postgres")
    metrics.serve(metrics_port)
    loop, store = postgres_loop(settings, stop, metrics, max_records)
    event(log, "postgres sink started", logging.INFO, topic=settings.topic("events"))
    try:
        loop.run()
    finally:
        loop.source.close()
        store.close()
    return 0


def clickhouse_loop(settings: Settings, client, lock, stop: threading.Event,
                    metrics: SinkMetrics, max_records: int = BATCH["clickhouse"]):
    """(loop, store): keel.events + keel.depth -> ClickHouse through `client`."""
    from sinks.clickhouse import ClickHouseStore, log_positions
    from sinks.depth_native import clear_blocks

    codec = Codec.from_settings(settings)
    if settings.embedded_clickhouse:
        # chDB takes the GIL back many times during an insert, and each time waits out
        # the polling thread's switch interval (5 ms by default): a 20k-row insert that
        # takes 16-21 ms alone took 108-124 ms beside a busy Python thread, 36-37 ms
        # at 0.5 ms (the busy thread kept 96-99% of its pace either way).
        sys.setswitchinterval(SWITCH_INTERVAL)
    keep_freed_memory()
    ttl = int(settings.extra.get("KEEL_CLICKHOUSE_DEPTH_TTL_DAYS", "30"))
    dlq = DeadLetters(settings, codec, "clickhouse-sink")
    blocks = None
    if settings.embedded_clickhouse:
        # This process owns chDB (the client is open): the depth block files under the
        # data dir are its own, and any there now are a killed predecessor's.
        blocks = settings.data_dir / "clickhouse-blocks"
        blocks.mkdir(parents=True, exist_ok=True)
        if removed := clear_blocks(blocks):
            event(log, "removed depth block files a killed sink left", logging.INFO,
                  files=removed)
    store = ClickHouseStore(client, settings.topic("events"), settings.topic("depth"),
                            lock=lock, depth_ttl_days=ttl,
                            raw_depth=settings.embedded_clickhouse,
                            dead_letter=lambda t, p, o, v, e: dlq.send_raw(t, p, o, None, v, e),
                            blocks_dir=None if blocks is None else str(blocks))
    store.ensure_schema()

    def assigned(consumer, partitions):
        positions = store.positions(partitions)
        log_positions(positions)
        consumer.assign(positions)

    # chDB pays ~20 ms of CPU per insert, whatever its size (sinks/__init__.py): at a low
    # rate, polls of 0.1 s made ~10 small depth and trades inserts (and candle-view
    # parts) a second, ~1/3 of a core at 100 orders/s on keel up (measured 2026-11-22).
    # After a short poll the next one waits up to LINGER for a whole batch; a backlog
    # (full batches) and its tail still poll at 0.1 s. Analysts see rows <= ~1 s late.
    source = Source(settings, group(settings, "clickhouse"),
                    [settings.topic("events"), settings.topic("depth")],
                    client_id="sink-clickhouse", max_records=max_records, on_assign=assigned,
                    linger=LINGER)
    # Pipelined, one batch in flight: the next batch is polled and its depth heads read
    # while chDB (which lets go of the GIL) inserts the previous one.
    loop = SinkLoop("clickhouse", source, None, store.write, store.transient, dlq, metrics,
                    stop, prepare=store.prepare(codec), pipeline=True, depth=1)
    return loop, store


def run_clickhouse(settings: Settings, metrics_port: int | None, max_records: int) -> int:
    """Embedded: become the chDB owner (serving /ping, /query, /metrics) and load it.
    Server URL: a plain consumer with its own clickhouse-connect client."""
    metrics = SinkMetrics("clickhouse")
    if settings.embedded_clickhouse:
        from infra.embedded.clickhouse import host

        def work(owner, stop: threading.Event) -> None:
            loop, _ = clickhouse_loop(settings, owner.client, owner.lock, stop, metrics,
                                      max_records)
            try:
                loop.run()
            finally:
                loop.source.close()

        return host(settings, work, metrics.registry)
    from infra.clickhouse import open_client

    stop = stop_on_signals()
    metrics.serve(metrics_port)
    client = open_client(settings)
    loop, _ = clickhouse_loop(settings, client, threading.Lock(), stop, metrics, max_records)
    try:
        loop.run()
    finally:
        loop.source.close()
        client.close()
    return 0
