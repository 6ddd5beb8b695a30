"""`keel sink postgres` against the real broker and PostgreSQL: exactly the trades and the
order states the events say, no matter how often the events are delivered."""
from __future__ import annotations

import psycopg

from engine.domain import Trade
from schemas.codec import Codec
from tests.sinks.feed import (
    PAIRS,
    caught_up,
    engine_events,
    expected_orders,
    produce,
    sink_process,
    stop,
    wait_for,
)

PARTITION = {pair: i for i, pair in enumerate(PAIRS)}


def _encoded(events) -> list[tuple[str, bytes]]:
    codec = Codec()
    return [(e.pair, codec.encode_event(e)) for e in events]


def _table(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def _env(kafka_bootstrap, prefix, dsn) -> dict[str, str]:
    return {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_POSTGRES_URL": dsn,
            "KEEL_TOPIC_PREFIX": prefix, "KEEL_LOG_LEVEL": "INFO"}


def test_trades_and_orders_are_loaded_once_even_when_delivered_twice(
        kafka_bootstrap, prefix, sink_db, tmp_path):
    events = engine_events(3000)
    trades = [e for e in events if type(e) is Trade]
    assert trades, "the workload must trade"
    topic, group = prefix + "events", prefix.rstrip(".") + "-sink-postgres"
    ends = produce(kafka_bootstrap, topic, _encoded(events), PARTITION)
    proc = sink_process("postgres", _env(kafka_bootstrap, prefix, sink_db), tmp_path / "sink.log")
    try:
        wait_for(caught_up(kafka_bootstrap, group, topic, ends), what="the sink to catch up")
        first = _table(sink_db, "SELECT count(*), sum(qty), sum(price * qty) FROM trades")
        orders_first = _table(sink_db, "SELECT * FROM orders ORDER BY pair, order_id")
        # The same events again (a producer retry, a replayed topic): nothing changes.
        ends = produce(kafka_bootstrap, topic, _encoded(events), PARTITION)
        wait_for(caught_up(kafka_bootstrap, group, topic, ends), what="the second copy")
        assert _table(sink_db, "SELECT count(*), sum(qty), sum(price * qty) FROM trades") == first
        assert _table(sink_db, "SELECT * FROM orders ORDER BY pair, order_id") == orders_first
    finally:
        assert stop(proc) == 0
    assert first == [(len(trades), sum(t.qty for t in trades),
                      sum(t.price * t.qty for t in trades))]
    got = {(r[0], r[1]): r[2:] for r in _table(
        sink_db, "SELECT pair, order_id, status, filled_qty, filled_quote, remaining FROM orders")}
    assert got == expected_orders(events)
    last, last_trade = {}, {}
    for e in events:
        last[e.pair] = e.seq
        if type(e) is Trade:
            last_trade[e.pair] = e.seq
    assert dict(_table(sink_db, "SELECT pair, last_seq FROM sink_progress "
                                "WHERE sink = 'postgres'")) == last
    # The trades' own watermark: past the last trade, no further than the last event.
    trades_marks = dict(_table(sink_db, "SELECT pair, last_seq FROM sink_progress "
                                        "WHERE sink = 'postgres:trades'"))
    assert trades_marks.keys() == last.keys()
    assert all(last_trade[p] <= trades_marks[p] <= last[p] for p in last)


def test_undecodable_records_go_to_the_dlq_and_the_sink_goes_on(
        kafka_bootstrap, prefix, sink_db, tmp_path):
    from confluent_kafka import Consumer

    events = engine_events(300)
    encoded = _encoded(events)
    garbage = [("BTCUSDT", b"\xc3\x01not avro at all"), ("BTCUSDT", b"")]
    topic, group = prefix + "events", prefix.rstrip(".") + "-sink-postgres"
    ends = produce(kafka_bootstrap, topic, encoded[:100] + garbage + encoded[100:], PARTITION)
    proc = sink_process("postgres", _env(kafka_bootstrap, prefix, sink_db), tmp_path / "sink.log")
    try:
        wait_for(caught_up(kafka_bootstrap, group, topic, ends), what="the sink to catch up")
    finally:
        assert stop(proc) == 0
    assert _table(sink_db, "SELECT count(*) FROM trades") == [
        (sum(1 for e in events if type(e) is Trade),)]
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{prefix}dlq-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([prefix + "dlq"])
    letters = []
    try:
        def read():
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                letters.append(Codec().decode("dead_letter", m.value()))
            return len(letters) >= 2
        wait_for(read, timeout=60, every=0)
    finally:
        consumer.close()
    assert sorted(d["value"] for d in letters) == sorted(v for _, v in garbage)
    assert {d["source_topic"] for d in letters} == {topic}
    assert all(d["reason"] and d["error_code"] < -1200 for d in letters)
