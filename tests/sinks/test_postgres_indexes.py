"""The read paths the PostgreSQL sink's indexes are for (docs/analytics.md) use them on a
loaded database: a user's fills (trades_maker_user / trades_taker_user), a pair's recent
trades (the primary key backwards) and a user's open orders (orders_user)."""
from __future__ import annotations

import json

import psycopg

from engine.domain import Trade
from tests.sinks.feed import columns, engine_events, opened_store


def _indexes(plan: dict) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", ()):
        found |= _indexes(child)
    return found


def _plan(conn: psycopg.Connection, sql: str, args: tuple) -> dict:
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, args).fetchone()[0]
    return (json.loads(row) if isinstance(row, str) else row)[0]["Plan"]


def test_the_documented_reads_use_their_indexes(sink_db):
    events = engine_events(5_000, seed=31)
    with opened_store(sink_db) as store:
        store.write(store.batch(columns(events)))
    trade = next(e for e in reversed(events) if type(e) is Trade)
    with psycopg.connect(sink_db) as conn:
        conn.execute("ANALYZE trades")
        conn.execute("ANALYZE orders")
        user, = conn.execute(
            "SELECT user_id FROM orders WHERE status IN ('NEW', 'PARTIALLY_FILLED') "
            "LIMIT 1").fetchone()
        fills = _plan(conn, "SELECT pair, trade_id, role, price, qty FROM fills "
                            "WHERE user_id = %s ORDER BY ts DESC LIMIT 100",
                      (trade.maker_user_id,))
        assert {"trades_maker_user", "trades_taker_user"} <= _indexes(fills)
        recent = _plan(conn, "SELECT trade_id, price, qty FROM trades WHERE pair = %s "
                             "ORDER BY trade_id DESC LIMIT 50", (trade.pair,))
        assert _indexes(recent) == {"trades_pkey"}
        open_orders = _plan(conn, "SELECT pair, order_id, price, remaining FROM orders "
                                  "WHERE user_id = %s AND status IN ('NEW', 'PARTIALLY_FILLED') "
                                  "ORDER BY created_ts DESC", (user,))
        assert _indexes(open_orders) == {"orders_user"}
