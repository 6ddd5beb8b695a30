"""The accounts gate's cap on open orders per account (markets max_open_orders).

What is checked: an order past the cap is refused TOO_MANY_OPEN_ORDERS on both of the
gate's paths, holds nothing and reaches no engine; a slot freed by a cancel is usable
again; and a user at the largest cap allowed, with every remembered window full of the
longest ids and messages, still writes changelog records under librdkafka's
1,000,000-byte message.max.bytes (a larger one stopped the worker for its partition)."""
from __future__ import annotations

import dataclasses

import orjson
import pytest

from engine.domain import ResultCode
from engine.markets import MAX_OPEN_ORDERS, MarketsConfigError, parse_markets
from streams.ledger import BATCH_PER_USER, RECENT
from streams.units import Units
from tests.streams.sim import MARKETS, Exchange, place, request
from tests.streams.test_userlog import written

BUY = 0
MESSAGE_MAX_BYTES = 1_000_000           # librdkafka's default, the changelog producer's


def capped(n: int) -> Exchange:
    ex = Exchange(dataclasses.replace(MARKETS, max_open_orders=n))
    ex.send(request("fund", 1, "Deposit", asset="QQQ", amount=10**9, reference=None))
    return ex


def test_an_order_past_the_cap_is_refused_and_holds_nothing():
    ex = capped(3)
    for i in range(3):
        assert ex.send(place(f"p{i}", 1, "AAAQQQ", BUY, 100, 2))[0]["code"] == 0
    ex.drain()
    before, queued = ex.accounts.balance(1, "QQQ"), len(ex.orders)
    [reply] = ex.send(place("p3", 1, "AAAQQQ", BUY, 100, 2, cid="fourth"))
    assert reply["code"] == ResultCode.TOO_MANY_OPEN_ORDERS
    assert reply["order_id"] is None and reply["client_order_id"] == "fourth"
    assert ex.accounts.balance(1, "QQQ") == before and len(ex.orders) == queued
    # the fast path declines it too, so the general path above is what decides
    assert ex.accounts.place_new(0, ex.offset + 1, "p4", 1, 1_000, "AAAQQQ", BUY, 0, 0, 100,
                                 2, 0, 0, None) is None
    # another user is not affected
    ex.send(request("fund2", 2, "Deposit", asset="QQQ", amount=10**9, reference=None))
    assert ex.send(place("q0", 2, "AAAQQQ", BUY, 100, 2))[0]["code"] == 0


def test_a_cancelled_order_frees_its_slot():
    ex = capped(2)
    first = ex.send(place("p0", 1, "AAAQQQ", BUY, 100, 2))[0]
    ex.send(place("p1", 1, "AAAQQQ", BUY, 100, 2))
    ex.drain()
    assert ex.send(place("p2", 1, "AAAQQQ", BUY, 100, 2))[0]["code"] \
        == ResultCode.TOO_MANY_OPEN_ORDERS
    cancel = {"pair": "AAAQQQ", "order_id": first["order_id"], "client_order_id": None}
    assert ex.send(request("c0", 1, "CancelOrder", **cancel))[0]["code"] == 0
    ex.drain()                          # the engine cancels, settlement releases the hold
    assert ex.send(place("p3", 1, "AAAQQQ", BUY, 100, 2))[0]["code"] == 0
    assert ex.accounts.place_new(0, ex.offset + 1, "p4", 1, 1_000, "AAAQQQ", BUY, 0, 0, 100,
                                 2, 0, 0, None) is None


def test_the_markets_file_bounds_the_cap():
    doc = {"assets": {"AAA": {"decimals": 2}, "QQQ": {"decimals": 2}},
           "markets": [{"pair": "AAAQQQ", "base": "AAA", "quote": "QQQ", "tick_size": "0.01",
                        "lot_size": "1", "partition": 0}]}
    assert parse_markets(doc).max_open_orders == MAX_OPEN_ORDERS
    assert parse_markets(dict(doc, max_open_orders=5)).max_open_orders == 5
    assert Units.from_markets(parse_markets(dict(doc, max_open_orders=5))).max_open_orders == 5
    for bad in (0, MAX_OPEN_ORDERS + 1, "10", True):
        with pytest.raises(MarketsConfigError, match="max_open_orders"):
            parse_markets(dict(doc, max_open_orders=bad))


def test_a_user_at_the_cap_fits_in_one_changelog_record():
    ex = capped(MAX_OPEN_ORDERS)
    accounts, log = ex.accounts, []
    written(accounts, log)
    longest = 36                                   # newClientOrderId's longest
    # the closed client ids it remembers: RECENT orders placed and cancelled
    for i in range(RECENT):
        ex.send(place(f"{i:0{longest}d}", 1, "AAAQQQ", BUY, 100, 2, cid=f"x{i:0{longest - 1}d}"))
    ex.send(request("cancel-all", 1, "CancelAllOrders", pair="AAAQQQ"))
    ex.drain()
    written(accounts, log)
    assert accounts.users["1"]["o"] == {}
    # the cap's open orders
    for i in range(MAX_OPEN_ORDERS):
        assert ex.send(place(f"o{i:0{longest - 1}d}", 1, "AAAQQQ", BUY, 100, 2,
                             cid=f"y{i:0{longest - 1}d}"))[0]["code"] == 0
    ex.drain()
    written(accounts, log)
    # two batches of the most records one user may have in a batch, each refused with the
    # longest message the gate writes, all kept as decisions
    order_id = next(iter(accounts.users["1"]["o"]))
    amend = {"pair": "AAAQQQ", "order_id": int(order_id), "client_order_id": None}
    for batch in range(2):
        for i in range(BATCH_PER_USER):
            [reply] = ex.send(request(f"a{batch}{i:0{longest - 2}d}", 1, "AmendOrder",
                                      new_price=10**9, new_qty=10**6, **amend))
            assert reply["code"] == ResultCode.INSUFFICIENT_BALANCE
        written(accounts, log)
    user = accounts.users["1"]
    assert len(user["o"]) == MAX_OPEN_ORDERS and len(user["r"]) == RECENT
    assert len(user["c"]) == RECENT + MAX_OPEN_ORDERS and len(user["d"]) >= BATCH_PER_USER
    sizes = [len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
             for _, value in log if value is not None]
    assert max(sizes) < MESSAGE_MAX_BYTES, max(sizes)
    # and the snapshot of this user, whole
    whole = {part: user[part] for part in ("b", "w", "s", "n", "d", "o", "c", "r", "g")}
    assert len(orjson.dumps(whole, option=orjson.OPT_NON_STR_KEYS)) < MESSAGE_MAX_BYTES
