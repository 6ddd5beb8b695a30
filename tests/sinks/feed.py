"""Real engine events for the sink tests: the engine itself matches a seeded workload, so
trades, fills and order states are what production would write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from decimal import Decimal

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from engine.engine import Engine
from engine.markets import Market
from engine.workload import operations, to_commands

PAIRS = ("BTCUSDT", "ETHUSDT")


def markets(pairs=PAIRS) -> list[Market]:
    return [Market(pair, pair[:3], "USDT", Decimal("0.01"), Decimal("0.00001"),
                   Decimal("0.00000001"), 1000, 1000, partition)
            for partition, pair in enumerate(pairs)]


def engine_events(n_ops: int, pairs=PAIRS, seed: int = 7, t0_ms: int | None = None) -> list:
    """Events of n_ops workload operations per pair, interleaved pair by pair."""
    t0 = int(time.time() * 1000) - 3_600_000 if t0_ms is None else t0_ms
    engine = Engine(markets(pairs))
    out: list = []
    per_pair = []
    for i, pair in enumerate(pairs):
        cmds = [c._replace(ts=t0 + c.ts * 7) for c in
                to_commands(operations(n_ops, seed=seed + i), pair=pair)]
        per_pair.append(engine.apply_many(cmds))
    for group in zip(*per_pair, strict=False):
        out.extend(group)
    # zip stops at the shortest: append every tail, each still in seq order
    shortest = min(len(p) for p in per_pair)
    for p in per_pair:
        out.extend(p[shortest:])
    return out


def create_topics(bootstrap: str, prefix: str, partitions: int = len(PAIRS)) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = {"events": partitions, "depth": partitions, "dlq": 1,
             "settlements": partitions, "balances": partitions}
    futures = admin.create_topics([NewTopic(prefix + n, p, 1) for n, p in names.items()])
    for f in futures.values():
        f.result(10)


def produce(bootstrap: str, topic: str, values: list[tuple[str, bytes]],
            partition_of: dict[str, int]) -> dict[int, int]:
    """Produce in order; returns partition -> the offset after the last record written.

    (Offsets come from delivery reports: tansu 0.6 answers ListOffsets wrongly.)
    """
    ends: dict[int, int] = {}

    def delivered(err, msg):
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "batch.num.messages": 10000, "enable.idempotence": True})
    for i, (pair, value) in enumerate(values):
        while True:
            try:
                producer.produce(topic, key=pair.encode(), value=value,
                                 partition=partition_of[pair], on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return ends


def sink_process(store: str, env: dict[str, str], log_path, *args: str) -> subprocess.Popen:
    out = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen([sys.executable, "-m", "infra.cli", "sink", store, *args],
                                env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)
    finally:
        out.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


@contextmanager
def postgres_sink(settings, dsn: str, codec, source, name: str):
    """The PostgreSQL sink's loop on a thread of its own, reading `source` as `keel sink
    postgres` runs it; on exit it is stopped and joined, `source` and the store closed.
    Yields the thread (alive afterwards only if it did not stop)."""
    from sinks.dlq import DeadLetters
    from sinks.loop import SinkLoop
    from sinks.metrics import SinkMetrics
    from sinks.postgres import TRANSIENT, PostgresStore

    store = PostgresStore(dsn, writers=2, batches=2, codec=codec)
    store.open()
    stop = threading.Event()
    loop = SinkLoop("postgres", source, None, store.write, TRANSIENT,
                    DeadLetters(settings, codec, "postgres-sink"), SinkMetrics("postgres"),
                    stop, prepare=store.prepare, pipeline=True, depth=2)
    runner = threading.Thread(target=loop.run, name=name)
    runner.start()
    try:
        yield runner
    finally:
        stop.set()
        runner.join(60)
        source.close()
        store.close()


def wait_for(predicate, timeout: float = 120.0, every: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets on topic (-1001 when none)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in tps]
    finally:
        c.close()


def caught_up(bootstrap: str, group: str, topic: str, ends: dict[int, int]):
    """A predicate: the group has committed every offset up to `ends`."""
    def check() -> bool:
        got = committed(bootstrap, group, topic, max(ends) + 1)
        return all(got[p] >= end for p, end in ends.items())
    return check


def expected_orders(events) -> dict[tuple[str, int], tuple]:
    """Orders as a plain replay of every event would leave them (independent of the sink's
    per-batch fold): (pair, order_id) -> (status, filled_qty, filled_quote, remaining)."""
    from engine.domain import Accepted, Amended, Cancelled, Done, Expired, Rejected, Trade

    orders: dict[tuple[str, int], list] = {}
    for e in events:
        t = type(e)
        if t is Accepted:
            orders[(e.pair, e.order_id)] = ["NEW", 0, 0, e.qty]
        elif t is Trade:
            for oid in (e.maker_order_id, e.taker_order_id):
                o = orders[(e.pair, oid)]
                o[0], o[1], o[2], o[3] = "PARTIALLY_FILLED", o[1] + e.qty, o[2] + e.price * e.qty, o[3] - e.qty
        elif t is Done:
            orders[(e.pair, e.order_id)][0:4:3] = ["FILLED", 0]
        elif t is Cancelled:
            orders[(e.pair, e.order_id)][0:4:3] = ["CANCELED", e.remaining]
        elif t is Expired:
            orders[(e.pair, e.order_id)][0:4:3] = ["EXPIRED", e.remaining]
        elif t is Amended:
            orders[(e.pair, e.order_id)][3] = e.qty
        elif t is Rejected and e.code != -3101 and (e.pair, e.order_id) not in orders:
            orders[(e.pair, e.order_id)] = ["REJECTED", 0, 0, None]
    return {k: tuple(v) for k, v in orders.items()}


def depth_updates(n: int, pairs=PAIRS, levels: int = 20, seed: int = 3,
                  t0_ms: int | None = None) -> list[dict]:
    """keel.depth records: per pair, a chain of diffs with a full snapshot every 10th."""
    import random

    rng = random.Random(seed)
    t0 = int(time.time() * 1000) - 3_600_000 if t0_ms is None else t0_ms
    out = []
    seq = dict.fromkeys(pairs, 0)
    for i in range(n):
        pair = pairs[i % len(pairs)]
        first = seq[pair] + 1
        seq[pair] += rng.randint(1, 5)
        snapshot = i % 10 == 9
        width = levels if snapshot else rng.randint(1, 4)
        mid = 1_000_000 + rng.randint(-50, 50)
        bids = [{"price": mid - k, "qty": rng.randint(0 if not snapshot else 1, 500)}
                for k in range(1, width + 1)]
        asks = [{"price": mid + k, "qty": rng.randint(0 if not snapshot else 1, 500)}
                for k in range(width)]
        out.append({"pair": pair, "first_update_id": seq[pair] if snapshot else first,
                    "last_update_id": seq[pair], "ts": t0 + i, "is_snapshot": snapshot,
                    "bids": bids, "asks": asks})
    return out


def candles(trades, seconds: int) -> dict[tuple[str, int], tuple]:
    """(pair, bucket start in s) -> (open, high, low, close, volume, quote volume, count),
    open/close by trade id."""
    out: dict[tuple[str, int], list] = {}
    for t in sorted(trades, key=lambda t: (t.pair, t.trade_id)):
        key = (t.pair, t.ts // 1000 // seconds * seconds)
        c = out.get(key)
        if c is None:
            out[key] = [t.price, t.price, t.price, t.price, t.qty, t.price * t.qty, 1]
        else:
            c[1], c[2], c[3] = max(c[1], t.price), min(c[2], t.price), t.price
            c[4] += t.qty
            c[5] += t.price * t.qty
            c[6] += 1
    return {k: tuple(v) for k, v in out.items()}


def keel(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], env={**os.environ, **env},
                          capture_output=True, timeout=timeout)


class Message:
    """A consumed record as the sinks read it (topic, partition, offset, value)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes = b"") -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v


def columns(events):
    """Engine events as the PostgreSQL sink's decoded columns (none dead)."""
    from schemas.codec import Codec
    from sinks.event_columns import decode

    codec = Codec()
    cols, dead = decode([codec.encode_event(e) for e in events], codec)
    assert not dead
    return cols


@contextmanager
def opened_store(dsn: str):
    """A PostgresStore with two writers, open for the block."""
    from sinks.postgres import PostgresStore

    store = PostgresStore(dsn, writers=2)
    store.open()
    try:
        yield store
    finally:
        store.close()


def stored(dsn: str):
    """(trade count, distinct trades, quantity sum) and {(pair, order_id): state} as the
    PostgreSQL sink left them."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        trades = conn.execute("SELECT count(*), count(DISTINCT (pair, trade_id)), sum(qty) "
                              "FROM trades").fetchone()
        orders = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT pair, order_id, status, filled_qty, filled_quote, remaining FROM orders")}
    return trades, orders
