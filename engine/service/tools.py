"""Operator and test tools around the engine's topics: create them, feed commands, read
back what the engine published, and compute what a clean run must publish.

Used by tests/engine_service, bench/engine_kafka.py and `keel replay`.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

from confluent_kafka import Producer

from engine.engine import Engine
from engine.markets import MarketsConfig
from engine.service.duplicates import SOURCE_HEADER, DuplicateFilter
from engine.service.heartbeat import ensure_heartbeat_topic
from engine.service.reader import LogReader
from engine.service.snapshots import partition_hash
from infra.kafka import admin_client, producer_config
from infra.settings import Settings
from schemas.codec import Codec

HEARTBEATS = "engine.heartbeats"
SENT_HEADER = "sent-ns"         # produce_commands(stamp=True): when the record was sent


class TopicsNotReady(RuntimeError):
    """A topic is missing and cannot be created, or has the wrong partition count."""


def ensure_engine_topics(settings: Settings, markets: MarketsConfig) -> None:
    """Every catalog topic, plus the heartbeat topic (one partition per engine partition)."""
    from infra.topics import ensure_topics, plan

    admin = admin_client(settings)
    bad = [o for o in ensure_topics(admin, plan(settings, markets)) if not o.ok]
    if bad:
        raise TopicsNotReady("topics not ready: " + "; ".join(
            f"{o.name} {o.status} {o.detail}".strip() for o in bad))
    ensure_heartbeat_topic(settings, settings.topic(HEARTBEATS), markets.partitions)


def produce_values(settings: Settings, topic: str, partition: int, items: Iterable[tuple],
                   rate: float | None = None) -> int:
    """Write (key, value) or (key, value, headers) records to one partition; at `rate`
    records/s if given (then each record leaves at once, as a live writer's would, instead
    of lingering for a batch)."""
    ready = threading.Event()
    extra = {}
    if rate:
        # The producer's statistics say when it holds its producer id (below).
        extra = {"statistics_interval_ms": 50, "stats_cb": lambda stats: ready.is_set() or (
            json.loads(stats).get("eos", {}).get("idemp_state") == "Assigned" and ready.set())}
    producer = Producer(producer_config(settings, "keel-feeder", linger_ms=0 if rate else 5,
                                        queue_buffering_max_messages=1_000_000, **extra))
    # Connect before the rate clock starts: records offered while the client connects
    # pile up and reach the broker as one burst, which a latency run would count against
    # the engine (one 5,000-record batch was 5% of a 10 s run's samples). Connected is not
    # enough: an idempotent producer sends nothing until it has its producer id, which on
    # tansu comes 0.5-1 s after the client is created (measured: WaitTransport until 0.5 or 1.0 s),
    # so the first ~0.5 s of a 10,000/s feed still reached the broker as one burst.
    producer.list_topics(topic, timeout=30)
    deadline = time.monotonic() + 30
    while rate and not ready.is_set() and time.monotonic() < deadline:
        producer.poll(0.01)
    n = 0
    t0 = time.perf_counter()
    for key, value, *headers in items:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition,
                                 headers=headers[0] if headers else None)
                break
            except BufferError:
                producer.poll(0.01)
        n += 1
        if rate and n % 100 == 0:
            ahead = n / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
    producer.flush(60)
    return n


def produce_commands(settings: Settings, codec: Codec, partition: int, commands,
                     rate: float | None = None, source: int | None = None,
                     stamp: bool = False) -> int:
    """Write commands to keel.orders. `source=p`: each record carries the keel-source
    header accounts partition p writes (b"p:i" for the i-th command, so the offsets rise
    as a request log's do). `stamp`: a `sent-ns` header with the wall clock (ns) at which
    the record was handed to the producer, for latency measurements."""
    topic = settings.topic("orders")
    prefix = None if source is None else f"{source}:".encode()
    encoded = ((c.pair.encode(), codec.encode_command(c),
                [] if prefix is None else [(SOURCE_HEADER, prefix + str(i).encode())])
               for i, c in enumerate(commands))
    if rate:
        # A rate-driven feed shares the machine with what it measures: generate and encode
        # before its clock starts (~9 us of CPU a command, ~9% of a core at 10,000/s).
        encoded = list(encoded)

    def records():
        for key, value, headers in encoded:
            if stamp:
                headers.append((SENT_HEADER, str(time.time_ns()).encode()))
            yield key, value, headers or None

    return produce_values(settings, topic, partition, records(), rate)


def read_partition(settings: Settings, topic: str, partition: int, start: int = 0,
                   timeout: float = 30.0) -> list:
    """Every committed record of a partition from `start` to its current end (the end
    confirmed by a fetch, and read with a fetch wait that widens on a long partition:
    LogReader)."""
    reader = LogReader(settings, "keel-tools-reader", "keel-tools-reader")
    try:
        return reader.read(topic, partition, start, timeout=timeout)
    finally:
        reader.close()


def clean_run(markets: MarketsConfig, partition: int, commands, codec: Codec,
              impl: str = "auto", headers=None) -> tuple[list[bytes], str]:
    """What an uninterrupted engine publishes on keel.events for these commands (in
    order) and the state hash of its final snapshot: the pure engine, the duplicate rules
    and the codec, no Kafka. `headers`, if given, holds each command's record headers
    (a list of (key, value) or None), in the same order."""
    engine = Engine(markets.pairs_on(partition), impl)
    home = {m.pair for m in markets.pairs_on(partition)}
    check = (duplicates := DuplicateFilter()).check
    out: list[bytes] = []
    encode = codec.encode_event
    records = ((c, None) for c in commands) if headers is None else zip(commands, headers,
                                                                       strict=True)
    for cmd, hdrs in records:
        if cmd.pair in home and check(cmd, hdrs) is True:
            out += [encode(ev) for ev in engine.apply(cmd)]
    return out, partition_hash(engine.snapshot(), duplicates.items(), duplicates.source_items())
