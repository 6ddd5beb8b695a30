"""The per-batch fold of order events (pure): one row or one delta per order."""
from __future__ import annotations

from engine.domain import (
    Accepted,
    Amended,
    Cancelled,
    Done,
    Expired,
    Rejected,
    ResultCode,
    Trade,
)
from sinks.orders import batch_rows

P = "BTCUSDT"


def _accepted(seq, oid, qty=10, price=100):
    return Accepted(P, seq, seq, oid, oid + 1000, 0, 0, 0, price, qty, 0)


def _trade(seq, tid, maker, taker, qty, price=100):
    return Trade(P, seq, seq, tid, price, qty, 1, maker, maker + 1000, taker, taker + 1000, 1, 2)


def test_an_order_born_in_the_batch_is_one_full_row():
    rows = batch_rows([_accepted(1, 1), _accepted(2, 2, qty=4), _trade(3, 1, 1, 2, 4),
                       Done(P, 4, 4, 2, 1002)])
    new = {r[1]: r for r in rows.new_orders()}
    # (pair, id, user, side, kind, tif, price, qty, quote, remaining, filled, quote filled,
    #  status, reason, created, updated, last_seq)
    assert new[1][9:13] == (6, 4, 400, "PARTIALLY_FILLED")
    assert new[2][9:13] == (0, 4, 400, "FILLED")
    assert new[2][14:] == (2, 4, 4)
    assert rows.order_updates() == [] and len(rows.trades) == 1


def test_an_existing_order_gets_a_delta_that_adds_to_what_is_stored():
    rows = batch_rows([_trade(10, 5, 1, 9, 3), Amended(P, 11, 11, 1, 1001, 101, 5, False),
                       _trade(12, 6, 1, 9, 2, price=101)])
    updates = {u[1]: u for u in rows.order_updates()}
    # (pair, id, price, remaining, minus, filled, quote filled, status, reason, updated, seq)
    assert updates[1] == (P, 1, 101, 5, 2, 5, 3 * 100 + 2 * 101, "PARTIALLY_FILLED", None, 12, 12)
    assert updates[9][3:8] == (None, 5, 5, 502, "PARTIALLY_FILLED")


def test_exits_set_what_was_left_and_the_final_status():
    rows = batch_rows([_trade(1, 1, 1, 2, 3), Cancelled(P, 2, 2, 1, 1001, 7, 0),
                       Expired(P, 3, 3, 2, 1002, 4, 2)])
    updates = {u[1]: u for u in rows.order_updates()}
    assert updates[1][3:9] == (7, 0, 3, 300, "CANCELED", 0)
    assert updates[2][3:9] == (4, 0, 3, 300, "EXPIRED", 2)


def test_rejections_name_new_orders_only():
    rows = batch_rows([
        Rejected(P, 1, 1, 50, 7, ResultCode.BELOW_MIN_NOTIONAL),   # a place: a REJECTED row
        Rejected(P, 2, 2, 51, 7, ResultCode.UNKNOWN_ORDER),        # a cancel of nothing
        _accepted(3, 52),
        Rejected(P, 4, 4, 52, 1052, ResultCode.DUPLICATE_ORDER_ID),  # the order rests on
    ])
    assert [(r[1], r[12], r[13]) for r in rows.rejected_orders()] == [
        (50, "REJECTED", ResultCode.BELOW_MIN_NOTIONAL)]
    assert [r[1] for r in rows.new_orders()] == [52]
    assert rows.order_updates() == []


def test_a_duplicate_id_rejection_then_fills_of_the_resting_order_are_a_delta():
    rows = batch_rows([Rejected(P, 5, 5, 60, 1060, ResultCode.DUPLICATE_ORDER_ID),
                       _trade(6, 1, 60, 61, 2)])
    assert rows.rejected_orders() == []
    assert {u[1] for u in rows.order_updates()} == {60, 61}
