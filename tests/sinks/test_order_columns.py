"""The columnar fold (sinks/order_columns.py) against the reference fold (sinks/orders.py):
the same trades, new orders, rejections and deltas for any cut of a real event stream."""
from __future__ import annotations

import random

import numpy as np
import psycopg
import pytest

from engine.domain import Accepted, Amended, Cancelled, Done, Expired, Rejected, ResultCode, Trade
from schemas.codec import Codec
from sinks.event_columns import decode
from sinks.order_columns import fold, fresh
from sinks.orders import batch_rows
from tests.sinks.feed import engine_events

P = "BTCUSDT"


def _columns(events):
    codec = Codec()
    cols, dead = decode([codec.encode_event(e) for e in events], codec)
    assert not dead
    return cols


def _same(events) -> None:
    want = batch_rows(events)
    got = fold(_columns(events))
    assert sorted(got.trades.rows()) == sorted(want.trades)
    assert sorted(got.new_orders.rows()) == sorted(want.new_orders())
    assert sorted(got.rejected.rows()) == sorted(want.rejected_orders())
    assert sorted(got.updates.rows()) == sorted(want.order_updates())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_cut_of_a_workload_folds_as_the_reference_does(seed):
    events = engine_events(1500, seed=seed)
    rng = random.Random(seed)
    at = 0
    while at < len(events):
        size = rng.choice([1, 2, 7, 50, 400, 3000])
        _same(events[at:at + size])
        at += size


def _accepted(seq, oid, qty=10, price=100):
    return Accepted(P, seq, seq, oid, oid + 1000, 0, 0, 0, price, qty, 0)


def _trade(seq, tid, maker, taker, qty, price=100):
    return Trade(P, seq, seq, tid, price, qty, 1, maker, maker + 1000, taker, taker + 1000, 1, 2)


def test_the_rare_orders_of_events_fold_as_the_reference_does():
    dup, unknown = ResultCode.DUPLICATE_ORDER_ID, ResultCode.UNKNOWN_ORDER
    _same([
        Rejected(P, 1, 1, 7, 1007, dup), _trade(2, 1, 7, 8, 2),          # dup id, then fills
        Rejected(P, 3, 3, 9, 1009, dup), Rejected(P, 4, 4, 9, 1009, dup),  # rejected twice
        Rejected(P, 5, 5, 10, 1010, unknown),                              # names nothing
        _accepted(6, 11), Rejected(P, 7, 7, 11, 1011, dup),               # after its accept
        _accepted(8, 12), _trade(9, 2, 12, 13, 4), Amended(P, 10, 10, 12, 1012, 99, 3, True),
        _trade(11, 3, 12, 14, 1, price=99), Cancelled(P, 12, 12, 12, 1012, 2, 0),
        _trade(13, 4, 15, 16, 5), Expired(P, 14, 14, 16, 1016, 1, 2),     # resting ones
        _trade(15, 5, 17, 15, 1), Done(P, 16, 16, 17, 1017),
        Amended(P, 17, 17, 18, 1018, 98, 6, False),                        # amend only
        Rejected(P, 18, 18, 19, 1019, ResultCode.TICK_VIOLATION), _accepted(19, 19),
    ])


def test_a_batch_with_nothing_fresh_folds_to_empty_tables():
    cols = _columns([_accepted(1, 1), _trade(2, 1, 1, 2, 1)])
    keep, _, _ = fresh(cols, {P: 5})
    tables = fold(cols.take(keep))
    assert [len(t) for t in (tables.trades, tables.new_orders, tables.rejected,
                             tables.updates)] == [0, 0, 0, 0]


def test_fresh_drops_what_the_watermark_and_earlier_events_cover_and_counts_gaps():
    events = [_accepted(s, s) for s in (4, 5, 6, 3, 5, 7, 9)]
    keep, last, gaps = fresh(_columns(events), {P: 4})
    assert keep.tolist() == [False, True, True, False, False, True, True]
    assert last == {P: 9}
    assert gaps == [(P, 7, 9)]
    keep, last, gaps = fresh(_columns([_accepted(1, 1), _accepted(3, 3)]), {})
    assert keep.all() and gaps == [(P, 1, 3)] and last == {P: 3}


def test_the_binary_copy_stream_loads_exactly_the_rows(make_database):
    events = engine_events(400, seed=5) + [Rejected(P, 10**6, 1, 10**9, 1, -3001)]
    tables = fold(_columns(events))
    tables.updates = fold(_columns(events[len(events) // 2:])).updates
    dsn = make_database()
    with psycopg.connect(dsn) as conn:
        for name, table in (("t", tables.trades), ("o", tables.new_orders),
                            ("r", tables.rejected), ("u", tables.updates)):
            assert len(table), name
            pg = {"int8": "bigint", "int4": "integer", "int2": "smallint", "text": "text"}
            conn.execute(f"CREATE TEMP TABLE {name} ("
                         + ", ".join(f"{c} {pg[t]}" for c, t in zip(table.names, table.types, strict=True))
                         + ")")
            with conn.cursor().copy(f"COPY {name} FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(table.payload())
            # Rows land in the order given (primary-key order from the fold), not
            # layout group by group: ctid order is insertion order in a fresh table.
            got = conn.execute(f"SELECT * FROM {name} ORDER BY ctid").fetchall()
            assert got == table.rows()
    statuses = {row[12] for row in tables.new_orders.rows()}
    assert len(statuses) >= 3, statuses      # several layouts were interleaved above
    # The orders' primary key is (order_id, pair) since migration 0010.
    keys = [(row[1], row[0]) for row in tables.new_orders.rows()]
    assert keys == sorted(keys) and len({row[0] for row in tables.new_orders.rows()}) == 2


def test_values_that_do_not_fit_the_column_are_refused_not_wrapped():
    table = fold(_columns([_accepted(1, 1)])).new_orders
    table.values[3] = np.array([1 << 20])
    with pytest.raises(ValueError):
        table.payload()
