"""PostgresStore against the real PostgreSQL: a batch split by pair over two connections
stays exactly-once when one part commits and the other fails, and rows already stored
past the watermark send the batch through the ON CONFLICT path instead of failing."""
from __future__ import annotations

import threading

import psycopg
import pytest

from engine.domain import Trade
from schemas.codec import Codec
from sinks.event_columns import decode
from sinks.postgres import PostgresStore
from tests.sinks.feed import engine_events, expected_orders


def _columns(events):
    codec = Codec()
    cols, dead = decode([codec.encode_event(e) for e in events], codec)
    assert not dead
    return cols


def _state(dsn: str):
    with psycopg.connect(dsn) as conn:
        trades = conn.execute("SELECT count(*), count(DISTINCT (pair, trade_id)), sum(qty) "
                              "FROM trades").fetchone()
        orders = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT pair, order_id, status, filled_qty, filled_quote, remaining FROM orders")}
    return trades, orders


@pytest.fixture
def store(sink_db):
    s = PostgresStore(sink_db, writers=2)
    s.open()
    yield s
    s.close()


def test_a_part_committed_before_a_failure_is_not_applied_twice(store, sink_db, monkeypatch):
    events = engine_events(1500, seed=12)
    cut = len(events) // 2
    store.write(store.batch(_columns(events[:cut])))
    batch = store.batch(_columns(events[cut:]))
    assert len(batch.parts) == 2                    # one part per pair, side by side
    apply, failed = store._apply, []

    def fail_once(cur, streams, out, direct):
        # The part on the helper connection fails after the main one started its own.
        if not failed and threading.current_thread().name != "MainThread":
            failed.append(True)
            raise psycopg.OperationalError("connection lost mid-batch")
        return apply(cur, streams, out, direct)

    monkeypatch.setattr(store, "_apply", fail_once)
    with pytest.raises(psycopg.OperationalError):
        store.write(batch)
    assert failed                                    # the helper's part failed ...
    half = _state(sink_db)[0][0]
    monkeypatch.setattr(store, "_apply", apply)
    report = store.write(batch)                      # ... the retry writes it, once
    assert report.replayed > 0 and report.events > 0
    trades = [e for e in events if type(e) is Trade]
    got_trades, got_orders = _state(sink_db)
    assert half < len(trades)
    assert got_trades == (len(trades), len(trades), sum(t.qty for t in trades))
    assert got_orders == expected_orders(events)


def test_rows_stored_past_a_lost_watermark_take_the_on_conflict_path(store, sink_db):
    events = engine_events(800, seed=13)
    batch = store.batch(_columns(events))
    store.write(batch)
    before = _state(sink_db)
    with psycopg.connect(sink_db) as conn:
        conn.execute("DELETE FROM sink_progress")
    report = store.write(batch)                      # COPY would hit the primary keys
    assert report.trades == 0 and report.events == len(events)
    assert _state(sink_db) == before
    assert before[1] == expected_orders(events)
