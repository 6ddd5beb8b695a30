"""PostgresStore against the real PostgreSQL: a batch split by pair and by table (an
ORDERS and a TRADES job a pair, each its own transaction and watermark) stays
exactly-once when some jobs commit and another fails, rows already stored past the
watermark send the batch through the ON CONFLICT path instead of failing, and a database
an older sink loaded keeps its place through migration 0009."""
from __future__ import annotations

import threading

import psycopg
import pytest

from engine.domain import Trade
from infra.migrate import MIGRATION_DIRS, migrate
from sinks.postgres import ORDERS, TRADES
from tests.sinks.feed import (
    columns,
    engine_events,
    expected_orders,
    opened_store,
    stored,
)


@pytest.fixture
def store(sink_db):
    with opened_store(sink_db) as s:
        yield s


@pytest.mark.parametrize("failing", [TRADES, ORDERS])
def test_a_job_committed_before_a_failure_is_not_applied_twice(store, sink_db, monkeypatch,
                                                                failing):
    events = engine_events(1500, seed=12)
    cut = len(events) // 2
    store.write(store.batch(columns(events[:cut])))
    before = stored(sink_db)
    batch = store.batch(columns(events[cut:]))
    assert len(batch.parts) == 2                    # one part per pair, side by side
    apply, failed = store._apply, []

    def fail_once(cur, streams, out, direct, job):
        # A job on a helper connection fails while the others run and commit.
        if not failed and job == failing and threading.current_thread().name != "MainThread":
            failed.append(job)
            raise psycopg.OperationalError("connection lost mid-batch")
        return apply(cur, streams, out, direct, job)

    monkeypatch.setattr(store, "_apply", fail_once)
    with pytest.raises(psycopg.OperationalError):
        store.write(batch)
    assert failed                                    # the helper's job failed ...
    half = stored(sink_db)
    trades = [e for e in events if type(e) is Trade]
    # ... after the other jobs committed theirs: the batch is in, but for one job's rows
    if failing == TRADES:
        assert before[0][0] < half[0][0] < len(trades)
        assert half[1] == expected_orders(events)
    else:
        assert half[0][0] == len(trades)
        assert before[1] != half[1] != expected_orders(events)
    monkeypatch.setattr(store, "_apply", apply)
    report = store.write(batch)                      # ... the retry writes it, once
    assert report.replayed > 0
    assert (report.events > 0) if failing == ORDERS else (report.trades > 0)
    got_trades, got_orders = stored(sink_db)
    assert got_trades == (len(trades), len(trades), sum(t.qty for t in trades))
    assert got_orders == expected_orders(events)


def test_rows_stored_past_a_lost_watermark_take_the_on_conflict_path(store, sink_db):
    events = engine_events(800, seed=13)
    batch = store.batch(columns(events))
    store.write(batch)
    before = stored(sink_db)
    with psycopg.connect(sink_db) as conn:
        conn.execute("DELETE FROM sink_progress")
    report = store.write(batch)                      # COPY would hit the primary keys
    assert report.trades == 0 and report.events == len(events)
    assert stored(sink_db) == before
    assert before[1] == expected_orders(events)


def test_an_upgraded_database_keeps_where_its_trades_were(make_database, tmp_path, caplog):
    """Migration 0009 on a database an older sink loaded (one watermark a pair for trades
    and orders): the trades' own watermark starts there, so a replayed batch goes
    straight in (without it, the replay would hit the trades' primary key)."""
    dsn = make_database()
    older = tmp_path / "migrations"
    older.mkdir()
    for path in MIGRATION_DIRS[0].glob("*.sql"):
        if int(path.name[:4]) < 9:
            (older / path.name).write_text(path.read_text())
    migrate(dsn, (older,))
    events = engine_events(1500, seed=14)
    cut = len(events) // 2
    with opened_store(dsn) as store:
        store.write(store.batch(columns(events[:cut])))
    with psycopg.connect(dsn) as conn:             # as the older sink left it
        conn.execute("DELETE FROM sink_progress WHERE sink LIKE '%:trades'")
        marks = dict(conn.execute("SELECT pair, last_seq FROM sink_progress").fetchall())
    # 0009 and what came after it (0010 rebuilds the orders' key over the rows stored).
    assert [m.version for m in migrate(dsn)][:2] == [9, 10]
    with psycopg.connect(dsn) as conn:
        assert dict(conn.execute("SELECT pair, last_seq FROM sink_progress "
                                 "WHERE sink = 'postgres:trades'").fetchall()) == marks
    replay = events[cut - 300:]                     # the Kafka commit of 300 was lost
    assert any(type(e) is Trade for e in events[cut - 300:cut])
    with opened_store(dsn) as store, caplog.at_level("WARNING"):
        report = store.write(store.batch(columns(replay)))
    assert "ON CONFLICT" not in caplog.text
    assert report.replayed == 300
    trades = [e for e in events if type(e) is Trade]
    got_trades, got_orders = stored(dsn)
    assert got_trades == (len(trades), len(trades), sum(t.qty for t in trades))
    assert got_orders == expected_orders(events)

