"""Sink throughput and lag on the embedded stores: `python bench/sinks.py [--json]`.

Starts its own tansu broker and PostgreSQL 18 (free ports, temp dir) and a chDB dir of
its own, then measures, with the real sink code (SinkLoop + stores) in this process:
  postgres_trades_per_s        engine events of the standard workload -> PostgreSQL
                               (trades and orders), after the group join, until caught up;
                               postgres_rows_per_s counts every row written (trades, orders
                               inserted and orders updated: one write each)
  clickhouse_depth_rows_per_s  keel.depth records -> the ClickHouse depth table (one row per
                               update; clickhouse_depth_levels_per_s counts price levels)
  lag_p99_ms                   PostgreSQL sink at a steady produce rate: store commit time
                               minus each event's ts (set at produce time), p99
plus the sink process's CPU per record (postgres_sink_cpu_us_per_event,
clickhouse_cpu_us_per_row: steadier than rates on a shared machine; chDB runs in the
process) and the PostgreSQL server's, all its backends (postgres_server_cpu_us_per_event). `--only postgres` (repeatable) runs a part
alone. `--only postgres-floor` (never run by default) measures the PostgreSQL store with
no Kafka and no decoding: the same workload's batches prepared before the clock, then
only PostgresStore.write, two batches of different pairs in flight
(postgres_floor_trades_per_s, its server CPU and WAL per event). Both sinks write
batches on worker threads (sinks/loop.py), so the timing ends with loop.finish(): the
last batch is committed, not just polled.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import TopicPartition  # noqa: E402

from engine.domain import Trade  # noqa: E402
from infra.embedded import free_port  # noqa: E402
from infra.embedded import kafka as embedded_kafka  # noqa: E402
from infra.embedded import postgres as embedded_postgres  # noqa: E402
from infra.migrate import migrate  # noqa: E402
from infra.postgres import ensure_database  # noqa: E402
from infra.settings import Settings  # noqa: E402
from schemas.codec import Codec  # noqa: E402
from sinks import BATCH  # noqa: E402
from sinks.metrics import SinkMetrics  # noqa: E402
from sinks.service import clickhouse_loop, postgres_loop  # noqa: E402
from tests.sinks.feed import (  # noqa: E402
    PAIRS,
    create_topics,
    depth_updates,
    engine_events,
    produce,
)

PARTITION = {pair: i for i, pair in enumerate(PAIRS)}


def _wait_kafka(bootstrap: str) -> None:
    from infra.health import HealthCheck

    deadline = time.monotonic() + 60
    while not HealthCheck("kafka", bootstrap).run(timeout=1.0).ok:
        if time.monotonic() > deadline:
            raise RuntimeError("tansu did not start")
        time.sleep(0.1)


def _drain(loop, ends: dict[tuple[str, int], int], timeout: float = 900
           ) -> tuple[float, float]:
    """Run the loop until every partition's position reaches its end; returns the seconds
    from the first batch written to the last commit (the group join is not counted) and
    the CPU seconds this process used meanwhile (all its threads: consumer, decoding,
    writers, and chDB, which runs inside it; not the PostgreSQL server's)."""
    first = None
    cpu = time.process_time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loop.step() and first is None:
            first = loop.first_started
        positions = loop.source.consumer.position(
            [TopicPartition(t, p) for (t, p) in ends])
        if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions):
            loop.finish()                # a pipelined loop still has the last batch in flight
            return time.monotonic() - first, time.process_time() - cpu
    raise RuntimeError("the sink did not catch up in time")


def _timed(loop) -> None:
    """Remember when the first batch was polled (write timing starts there)."""
    step, loop.first_started = loop.step, None

    def timed_step():
        started = time.monotonic()
        done = step()
        if done and loop.first_started is None:
            loop.first_started = started
        return done
    loop.step = timed_step


def _server_cpu(pid: int | None) -> float:
    """CPU seconds used so far by a server process and its children (PostgreSQL's
    backends), 0 when unknown."""
    if pid is None:
        return 0.0
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def bench_postgres(settings: Settings, ops: int, server_pid: int | None = None,
                   batch: int | None = None) -> dict:
    events = engine_events(ops, seed=21)
    trades = sum(1 for e in events if type(e) is Trade)
    codec = Codec()
    topic = settings.topic("events")
    ends = produce(settings.bootstrap, topic, [(e.pair, codec.encode_event(e)) for e in events],
                   PARTITION)
    loop, store = postgres_loop(settings, threading.Event(), SinkMetrics("postgres"),
                                batch or BATCH["postgres"])
    _timed(loop)
    rows = [0]

    def written(report, _now: float) -> None:
        rows[0] += report.trades + report.orders
    loop.on_written = written
    server = _server_cpu(server_pid)
    try:
        seconds, cpu = _drain(loop, {(topic, p): end for p, end in ends.items()})
        server = _server_cpu(server_pid) - server
    finally:
        loop.source.close()
        store.close()
    return {"postgres_trades_per_s": round(trades / seconds),
            "postgres_events_per_s": round(len(events) / seconds),
            "postgres_rows_per_s": round(rows[0] / seconds),
            "postgres_sink_cpu_us_per_event": round(cpu / len(events) * 1e6, 2),
            "postgres_server_cpu_us_per_event": round(server / len(events) * 1e6, 2),
            "postgres_trades": trades, "postgres_events": len(events),
            "postgres_seconds": round(seconds, 2)}


def bench_postgres_floor(settings: Settings, ops: int, server_pid: int | None = None,
                         batch: int | None = None) -> dict:
    """The store alone: the same workload's batches decoded, folded and encoded before the
    clock starts, then only PostgresStore.write (the sink's transactions, on its
    connections), two batches of different pairs in flight as in the sink's pipeline:
    what PostgreSQL takes with no Kafka and no decoding in the way."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import zip_longest

    import psycopg

    from sinks.event_columns import decode
    from sinks.postgres import PostgresStore

    events = engine_events(ops, seed=21)
    trades = sum(1 for e in events if type(e) is Trade)
    codec = Codec()
    size = batch or BATCH["postgres"]
    by_pair: dict[str, list[bytes]] = {}
    for e in events:
        by_pair.setdefault(e.pair, []).append(codec.encode_event(e))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE trades, orders, sink_progress")  # empty, as the sink found them
    store = PostgresStore(settings.postgres_dsn, codec=codec)
    store.open()
    try:
        # What the sink polls: a batch holds one partition's run (see sinks/postgres.py).
        runs = [[store.batch(decode(values[i:i + size], codec)[0])
                 for i in range(0, len(values), size)] for values in by_pair.values()]
        rounds = [[b for b in r if b is not None] for r in zip_longest(*runs)]
        store.watermarks()                               # a connection made, not timed
        wal = _wal_lsn(settings.postgres_dsn)
        server = _server_cpu(server_pid)
        cpu, started = time.process_time(), time.monotonic()
        with ThreadPoolExecutor(len(runs)) as pool:
            for r in rounds:                             # one batch of each pair at a time
                list(pool.map(store.write, r))
        seconds = time.monotonic() - started
        cpu, server = time.process_time() - cpu, _server_cpu(server_pid) - server
        wal = _wal_lsn(settings.postgres_dsn) - wal
    finally:
        store.close()
    return {"postgres_floor_trades_per_s": round(trades / seconds),
            "postgres_floor_events_per_s": round(len(events) / seconds),
            "postgres_floor_client_cpu_us_per_event": round(cpu / len(events) * 1e6, 2),
            "postgres_floor_server_cpu_us_per_event": round(server / len(events) * 1e6, 2),
            "postgres_floor_wal_bytes_per_event": round(wal / len(events)),
            "postgres_floor_wal_mb_per_s": round(wal / seconds / 1e6, 1)}


def _wal_lsn(dsn: str) -> int:
    """Bytes of WAL written so far by the server."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def bench_clickhouse(settings: Settings, n: int, batch: int | None = None) -> dict:
    import clickhouse_connect

    depth = depth_updates(n, seed=4)
    levels = sum(len(d["bids"]) + len(d["asks"]) for d in depth)
    codec = Codec()
    topic = settings.topic("depth")
    ends = produce(settings.bootstrap, topic,
                   [(d["pair"], codec.encode("depth_update", d)) for d in depth], PARTITION)
    client = clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)
    loop, _ = clickhouse_loop(settings, client, threading.Lock(), threading.Event(),
                              SinkMetrics("clickhouse"), batch or BATCH["clickhouse"])
    _timed(loop)
    try:
        seconds, cpu = _drain(loop, {(topic, p): end for p, end in ends.items()})
    finally:
        loop.source.close()
        client.close()
    return {"clickhouse_depth_rows_per_s": round(len(depth) / seconds),
            "clickhouse_depth_levels_per_s": round(levels / seconds),
            "clickhouse_cpu_us_per_row": round(cpu / len(depth) * 1e6, 2),
            "clickhouse_depth_rows": len(depth), "clickhouse_depth_levels": levels,
            "clickhouse_seconds": round(seconds, 2)}


def bench_lag(settings: Settings, rate: int, seconds: float) -> dict:
    """The PostgreSQL sink under a steady load well below its capacity."""
    events = engine_events(int(rate * seconds) // len(PAIRS) + 1000, seed=5)
    codec = Codec()
    topic = settings.topic("events")
    lags: list[float] = []
    stop = threading.Event()
    loop, store = postgres_loop(settings, stop, SinkMetrics("postgres"))
    write = loop.write

    def write_and_note(batch):
        report = write(batch)
        report.event_ts = batch.events.ts.tolist()
        return report

    def committed(report, now: float) -> None:
        lags.extend(now * 1000 - ts for ts in getattr(report, "event_ts", ()))

    loop.write, loop.on_written = write_and_note, committed
    worker = threading.Thread(target=loop.run)
    worker.start()
    try:
        time.sleep(6)                                   # group join
        from confluent_kafka import Producer
        producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 5})
        tick, sent, began = 0.01, 0, time.monotonic()
        while sent < len(events) and time.monotonic() - began < seconds:
            due = int((time.monotonic() - began) * rate)
            while sent < due and sent < len(events):
                e = events[sent]._replace(ts=int(time.time() * 1000))
                producer.produce(topic, key=e.pair.encode(), value=codec.encode_event(e),
                                 partition=PARTITION[e.pair])
                sent += 1
            producer.poll(0)
            time.sleep(tick)
        producer.flush(30)
        time.sleep(3)
    finally:
        stop.set()
        worker.join(60)
        loop.source.close()
        store.close()
    lags.sort()
    p = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 1)) if lags else None
    return {"lag_p50_ms": p(0.50) if p else None, "lag_p99_ms": p(0.99) if p else None,
            "lag_events": len(lags), "lag_rate_per_s": rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ops", type=int, default=100_000, help="workload ops per pair")
    parser.add_argument("--depth", type=int, default=1_000_000,
                        help="keel.depth records (1M: the load runs ~2 s; 200k ran ~0.4 s, "
                             "too short for a stable figure)")
    parser.add_argument("--rate", type=int, default=5_000, help="events/s for the lag run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag run")
    parser.add_argument("--batch", type=int, default=None,
                        help="records per store transaction (default: keel sink's)")
    parser.add_argument("--only", action="append",
                        choices=("postgres", "clickhouse", "lag", "postgres-floor"),
                        help="run only these parts (repeatable; default: all but "
                             "postgres-floor)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keel-bench-sinks-") as tmp:
        tmp = Path(tmp)
        kport, pport = free_port(), free_port()
        broker = embedded_kafka.spawn(kport, tmp / "kafka.log")
        log = open(tmp / "postgres.log", "ab")  # noqa: SIM115 - closed below
        pg = embedded_postgres.spawn(tmp / "pg", pport, stdout=log)
        try:
            settings = Settings(data_dir=tmp / "keel", kafka_bootstrap=f"127.0.0.1:{kport}",
                                postgres_url=f"postgresql://postgres@127.0.0.1:{pport}/keel")
            _wait_kafka(settings.bootstrap)
            embedded_postgres.wait_ready(settings.postgres_dsn, pg)
            ensure_database(settings.postgres_dsn)
            migrate(settings.postgres_dsn)
            (tmp / "keel" / "clickhouse").mkdir(parents=True)
            out: dict = {}
            for i, (name, run) in enumerate((
                    ("postgres", lambda s: bench_postgres(s, args.ops, pg.pid, args.batch)),
                    ("clickhouse", lambda s: bench_clickhouse(s, args.depth, args.batch)),
                    ("lag", lambda s: bench_lag(s, args.rate, args.seconds)),
                    ("postgres-floor",
                     lambda s: bench_postgres_floor(s, args.ops, pg.pid, args.batch)))):
                if (name not in args.only) if args.only else name == "postgres-floor":
                    continue
                prefix = f"b{i}."
                create_topics(settings.bootstrap, prefix)
                out.update(run(settings.with_(topic_prefix=prefix)))
                if not args.json:
                    print(name, {k: v for k, v in out.items()}, flush=True)
        finally:
            embedded_postgres.stop(pg)
            log.close()
            broker.terminate()
            broker.wait(15)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
