"""The PostgreSQL sink does not widen its fetch wait behind an open transaction (real
broker and PostgreSQL).

A read_committed reader cannot read past a transaction that is still open: while the
engine is stopped inside one (dead until its next instance fences it, or paused), the
partition's records are in the log but not readable. Measured against the high watermark
the sink looks behind and standing still, which its starvation rule (sinks/source.py,
infra.fetchwait) takes for tansu starving it: the wait doubled and the consumer left and
rejoined the group, for every 5 s the engine stayed away, and a widened wait is never
narrowed. Measured against the last stable offset the sink is at the end.
"""
from __future__ import annotations

import time
import uuid

import psycopg
from confluent_kafka import Producer

from engine.domain import Trade
from infra.settings import Settings
from schemas.codec import Codec
from sinks.source import FETCH_WAIT_MS, STARVE_CHECK_S, STARVED_CHECKS, Source
from tests.sinks.feed import engine_events, postgres_sink, wait_for


def _trades(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM trades").fetchone()[0]


def test_an_open_transaction_does_not_widen_the_sinks_wait(kafka_bootstrap, prefix, sink_db):
    events = engine_events(300, pairs=("BTCUSDT",))
    half = len(events) // 2
    first = sum(1 for e in events[:half] if type(e) is Trade)
    trades = sum(1 for e in events if type(e) is Trade)
    assert 0 < first < trades
    codec = Codec()
    settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                  "KEEL_POSTGRES_URL": sink_db, "KEEL_TOPIC_PREFIX": prefix})
    topic = settings.topic("events")
    engine = Producer({"bootstrap.servers": kafka_bootstrap,
                       "transactional.id": f"t-engine-{uuid.uuid4().hex}"})
    engine.init_transactions(30)
    engine.begin_transaction()
    for e in events[:half]:
        engine.produce(topic, codec.encode_event(e), b"BTCUSDT", partition=0)
    engine.commit_transaction(10)

    source = Source(settings, prefix.rstrip(".") + "-sink-postgres", [topic],
                    client_id="t-sink-open-txn", eager=True)
    with postgres_sink(settings, sink_db, codec, source, "t-sink-open-txn") as runner:
        wait_for(lambda: _trades(sink_db) == first, timeout=60, every=0.2,
                 what="the committed half")
        generation = source.generation
        # The engine stops inside a transaction: its records are in the log, unreadable.
        engine.begin_transaction()
        for e in events[half:]:
            engine.produce(topic, codec.encode_event(e), b"BTCUSDT", partition=0)
        assert engine.flush(10) == 0
        time.sleep(STARVE_CHECK_S * (STARVED_CHECKS + 3))
        assert _trades(sink_db) == first
        assert (source.fetch_wait_ms, source.generation) == (FETCH_WAIT_MS, generation)
        engine.commit_transaction(10)
        wait_for(lambda: _trades(sink_db) == trades, timeout=60, every=0.2,
                 what="the transaction's trades once committed")
    assert not runner.is_alive()
    assert source.fetch_wait_ms == FETCH_WAIT_MS
