"""A PostgreSQL commit the database loses (a crash before its WAL reached the disk: what
`synchronous_commit = off` would allow) takes the job's watermark with its rows, and a
replay from any earlier offset restores exactly the state that commit had made.

This is the store's half of what asynchronous commit would need. The other half is the
loop's and is not there: SinkLoop commits the Kafka offsets as soon as the write returns,
so after a lost commit the offsets may already be past the lost rows, and a running sink
keeps reading from its position, not from the database's watermark. The sink therefore
keeps PostgreSQL's synchronous commit on its connections."""
from __future__ import annotations

import uuid
from contextlib import contextmanager

import psycopg
from psycopg import sql

from engine.domain import Trade
from infra.postgres import with_database
from sinks.postgres import TRADES_SUFFIX
from tests.sinks.feed import (
    columns,
    engine_events,
    expected_orders,
    opened_store,
    stored,
)


def _state(dsn: str):
    trades, orders = stored(dsn)
    with psycopg.connect(dsn) as conn:
        marks = dict(((r[0], r[1]), r[2]) for r in conn.execute(
            "SELECT sink, pair, last_seq FROM sink_progress"))
    return trades, orders, marks


@contextmanager
def _snapshot(dsn: str):
    """A copy of the database as it is now (no session may be open on it)."""
    admin = with_database(dsn, "postgres")
    name = f"lost_{uuid.uuid4().hex[:12]}"
    source = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(source)))
    try:
        yield with_database(dsn, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def test_a_lost_commit_loses_its_watermark_too_and_a_replay_restores_it(sink_db):
    events = engine_events(1500, seed=31)
    first, second = len(events) // 3, 2 * len(events) // 3
    with opened_store(sink_db) as store:
        store.write(store.batch(columns(events[:first])))
    kept = _state(sink_db)
    # The database as a crash that lost the next batch's commits would leave it.
    with _snapshot(sink_db) as lost:
        with opened_store(sink_db) as store:
            store.write(store.batch(columns(events[first:second])))
        whole = _state(sink_db)
        assert whole[2] != kept[2]                    # the batch moved both watermarks
        assert _state(lost) == kept                   # the copy: as before the batch
        # Kafka redelivers from the last offset it committed, here the first batch's
        # start, and the batch after it follows: each event lands exactly once (orders
        # stored in the first batch take their fills as deltas, not twice).
        with opened_store(lost) as store:
            report = store.write(store.batch(columns(events[:second])))
            assert report.replayed == first
            assert report.events == second - first
            store.write(store.batch(columns(events[second:])))
        with opened_store(sink_db) as store:
            store.write(store.batch(columns(events[second:])))
        trades = [e for e in events if type(e) is Trade]
        for dsn in (lost, sink_db):
            got_trades, got_orders, marks = _state(dsn)
            assert got_trades == (len(trades), len(trades), sum(t.qty for t in trades))
            assert got_orders == expected_orders(events)
            last = {e.pair: e.seq for e in events}
            assert marks == {**{("postgres", p): s for p, s in last.items()},
                             **{("postgres" + TRADES_SUFFIX, p): s for p, s in last.items()}}
