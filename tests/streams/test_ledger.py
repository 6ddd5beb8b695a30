"""The accounts rules on concrete stories (pure: accounts -> engine -> settlement in process)."""
from __future__ import annotations

from engine.domain import ResultCode, SetTrading
from streams.holds import hold_for
from tests.streams.sim import UNITS, Exchange, place, request

AQ, BQ = UNITS.pairs["AAAQQQ"], UNITS.pairs["BBBQQQ"]
BUY, SELL = 0, 1


def codes(replies):
    return [r["code"] for r in replies]


def fund(ex: Exchange, uid: int, asset: str, amount: int, rid: str | None = None):
    return ex.send(request(rid or f"dep-{uid}-{asset}-{amount}", uid, "Deposit", asset=asset,
                           amount=amount, reference=None))


def test_a_user_funded_for_one_order_gets_exactly_one_accepted_across_pairs():
    ex = Exchange()
    need = hold_for(AQ, BUY, 0, 100, 3, 0)[1]
    assert hold_for(BQ, BUY, 0, 300, 1, 0)[1] <= need     # either order alone fits
    fund(ex, 7, "QQQ", need)
    replies = []
    for i in range(10):
        pair, price, qty = ("AAAQQQ", 100, 3) if i % 2 == 0 else ("BBBQQQ", 300, 1)
        replies += ex.send(place(f"r{i}", 7, pair, BUY, price, qty))
    assert codes(replies).count(0) == 1
    assert set(codes(replies)) == {0, ResultCode.INSUFFICIENT_BALANCE}
    assert len(ex.orders) == 1
    assert ex.accounts.balance(7, "QQQ") == (0, need)


def test_a_trade_moves_funds_charges_fees_and_releases_the_unused_hold():
    ex = Exchange()
    fund(ex, 1, "AAA", 1_000)                   # seller: 10 lots
    fund(ex, 2, "QQQ", 100_000)                 # buyer
    assert codes(ex.send(place("s", 1, "AAAQQQ", SELL, 90, 4))) == [0]
    ex.drain()
    assert codes(ex.send(place("b", 2, "AAAQQQ", BUY, 100, 4))) == [0]
    ex.drain()
    # executed at the maker's 90: notional 360 units = 3600 QQQ units
    maker_fee, taker_fee = 1 * 10, 1 * 10       # ceil(0.36), ceil(0.9) notional units
    assert ex.accounts.balance(1, "AAA") == (600, 0)
    assert ex.accounts.balance(1, "QQQ") == (3600 - maker_fee, 0)
    assert ex.accounts.balance(2, "AAA") == (400, 0)
    assert ex.accounts.balance(2, "QQQ") == (100_000 - 3600 - taker_fee, 0)
    assert ex.accounts.balance(0, "QQQ") == (maker_fee + taker_fee, 0)
    assert ex.totals() == ex.expected_totals()
    assert not ex.accounts.open_orders() and not ex.settlement.live


def test_a_resting_order_keeps_its_hold_until_cancelled_by_its_owner_only():
    ex = Exchange()
    fund(ex, 1, "QQQ", 10_000)
    [ok] = ex.send(place("b", 1, "AAAQQQ", BUY, 100, 2, cid="mine"))
    ex.drain()
    held = hold_for(AQ, BUY, 0, 100, 2, 0)[1]
    assert ex.accounts.balance(1, "QQQ") == (10_000 - held, held)
    cancel = {"pair": "AAAQQQ", "order_id": ok["order_id"], "client_order_id": None}
    # another user's order is unknown to this user (its state lives with its owner)
    assert codes(ex.send(request("x", 2, "CancelOrder", **cancel))) == [ResultCode.UNKNOWN_ORDER]
    assert codes(ex.send(request("y", 1, "CancelOrder", pair="BBBQQQ",
                                 order_id=ok["order_id"], client_order_id=None))) \
        == [ResultCode.UNKNOWN_ORDER]
    assert not ex.orders
    assert codes(ex.send(request("z", 1, "CancelOrder", pair="AAAQQQ", order_id=None,
                                 client_order_id="mine"))) == [0]
    ex.drain()
    assert ex.accounts.balance(1, "QQQ") == (10_000, 0)
    assert codes(ex.send(request("w", 1, "CancelOrder", **cancel))) == [ResultCode.UNKNOWN_ORDER]


def test_duplicates_are_refused_and_change_nothing():
    ex = Exchange()
    fund(ex, 1, "QQQ", 10_000, rid="d1")
    assert codes(fund(ex, 1, "QQQ", 10_000, rid="d1")) == [ResultCode.DUPLICATE_REQUEST]
    assert ex.accounts.balance(1, "QQQ") == (10_000, 0)
    assert codes(ex.send(place("p1", 1, "AAAQQQ", BUY, 100, 1, cid="c"))) == [0]
    assert codes(ex.send(place("p1", 1, "AAAQQQ", BUY, 100, 1, cid="c"))) \
        == [ResultCode.DUPLICATE_REQUEST]
    assert codes(ex.send(place("p2", 1, "AAAQQQ", BUY, 100, 1, cid="c"))) \
        == [ResultCode.DUPLICATE_CLIENT_ORDER_ID]
    assert len(ex.orders) == 1


def test_validation_rejects_before_holding():
    ex = Exchange()
    fund(ex, 1, "QQQ", 10_000)
    assert codes(ex.send(place("a", 1, "NOPE", BUY, 100, 1))) == [ResultCode.UNKNOWN_PAIR]
    assert codes(ex.send(place("b", 1, "AAAQQQ", BUY, 10, 1))) == [ResultCode.BELOW_MIN_NOTIONAL]
    assert codes(ex.send(place("c", 1, "AAAQQQ", BUY, 0, 1, kind=1))) == [ResultCode.INVALID_PRICE]
    assert codes(ex.send(request("d", 1, "Deposit", asset="XXX", amount=5, reference=None))) \
        == [ResultCode.UNKNOWN_ASSET]
    assert ex.accounts.balance(1, "QQQ") == (10_000, 0) and not ex.orders


def test_an_engine_rejection_releases_the_whole_hold():
    ex = Exchange()
    fund(ex, 1, "QQQ", 10_000)
    ex.engine.apply(SetTrading("AAAQQQ", False, 1))
    assert codes(ex.send(place("b", 1, "AAAQQQ", BUY, 100, 2))) == [0]
    ex.match()
    assert type(ex.events[-1]).__name__ == "Rejected"
    ex.settle()
    assert ex.accounts.balance(1, "QQQ") == (10_000, 0)
    assert not ex.accounts.open_orders()


def test_withdrawal_is_held_until_its_result():
    ex = Exchange()
    fund(ex, 1, "QQQ", 1_000)
    withdraw = {"asset": "QQQ", "amount": 600, "destination": None}
    assert codes(ex.send(request("w1", 1, "Withdraw", **withdraw))) == [0]
    assert ex.accounts.balance(1, "QQQ") == (400, 600)
    assert codes(ex.send(request("w2", 1, "Withdraw", **withdraw))) \
        == [ResultCode.INSUFFICIENT_BALANCE]
    result = {"withdrawal_request_id": "w1", "asset": "QQQ", "amount": 600, "reference": None}
    assert codes(ex.send(request("r1", 1, "WithdrawalResult", completed=False, **result))) == [0]
    assert ex.accounts.balance(1, "QQQ") == (1_000, 0)
    assert codes(ex.send(request("w3", 1, "Withdraw", **withdraw))) == [0]
    assert codes(ex.send(request("r2", 2, "WithdrawalResult", completed=True,
                                 **dict(result, withdrawal_request_id="w3")))) \
        == [ResultCode.INVALID_REQUEST]      # another user's withdrawal
    assert codes(ex.send(request("r3", 1, "WithdrawalResult", completed=True,
                                 **dict(result, withdrawal_request_id="w3")))) == [0]
    assert ex.accounts.balance(1, "QQQ") == (400, 0)
    assert ex.totals() == ex.expected_totals()


def test_amend_must_fit_in_the_existing_hold():
    ex = Exchange()
    fund(ex, 1, "QQQ", 100_000)
    [ok] = ex.send(place("b", 1, "AAAQQQ", BUY, 100, 4))
    ex.drain()
    amend = {"pair": "AAAQQQ", "order_id": ok["order_id"], "client_order_id": None}
    assert codes(ex.send(request("a1", 1, "AmendOrder", new_price=100, new_qty=5, **amend))) \
        == [ResultCode.INSUFFICIENT_BALANCE]
    assert codes(ex.send(request("a2", 1, "AmendOrder", new_price=90, new_qty=4, **amend))) == [0]
    ex.drain()
    assert type(ex.events[-1]).__name__ == "Amended"
    assert ex.send(request("c", 1, "CancelAllOrders", pair="AAAQQQ"))[0]["code"] == 0
    ex.drain()
    assert ex.accounts.balance(1, "QQQ") == (100_000, 0)


def test_redelivered_settlements_change_nothing():
    def run(duplicate: bool) -> dict:
        ex = Exchange(duplicate_settlements=duplicate)
        fund(ex, 1, "AAA", 2_000)
        fund(ex, 2, "QQQ", 100_000)
        ex.send(place("s1", 1, "AAAQQQ", SELL, 90, 3))
        ex.send(place("s2", 1, "AAAQQQ", SELL, 95, 5))
        ex.drain()
        ex.send(place("b1", 2, "AAAQQQ", BUY, 100, 6))
        ex.drain()
        return dict(ex.accounts.balances())

    assert run(True) == run(False)


def test_a_settlement_that_would_go_negative_is_set_aside_not_applied():
    ex = Exchange()
    fund(ex, 1, "AAA", 500)
    record = {"user_id": 1, "pair": "AAAQQQ", "seq": 9, "ts": 5, "reason": 0, "order_id": 77,
              "trade_id": 1, "entries": [{"asset": "AAA", "available_delta": 0,
                                          "held_delta": -300},
                                         {"asset": "QQQ", "available_delta": 900,
                                          "held_delta": 0}]}
    out = ex.accounts.apply_settlement(record)
    assert out.invalid and "1:AAA" in out.invalid and not out.balances
    assert ex.accounts.balance(1, "AAA") == (500, 0)
    assert ex.accounts.balance(1, "QQQ") == (0, 0)


def test_a_request_replayed_at_its_offset_changes_nothing_and_rebuilds_its_outputs():
    # after a crash the worker replays records whose state was already written: their
    # outputs come again, rebuilt from the decision kept in the user's state
    ex = Exchange()
    fund(ex, 1, "QQQ", 10_000)
    requests = [place("p1", 1, "AAAQQQ", BUY, 100, 2, cid="c1"),
                place("p2", 1, "AAAQQQ", BUY, 100, 10**6),            # insufficient
                request("c", 1, "CancelOrder", pair="AAAQQQ", order_id=None,
                        client_order_id="c1")]
    first = [ex.accounts.handle_request(r, 3, 100 + i) for i, r in enumerate(requests)]
    state = (ex.accounts.balances(), ex.accounts.open_orders())
    again = [ex.accounts.handle_request(r, 3, 100 + i) for i, r in enumerate(requests)]
    assert (ex.accounts.balances(), ex.accounts.open_orders()) == state
    for one, two in zip(first, again, strict=True):
        assert two.commands == one.commands and two.replies == one.replies
    assert [len(o.commands) for o in again] == [1, 0, 1]
    held = hold_for(AQ, BUY, 0, 100, 2, 0)[1]       # the cancel is not settled yet
    assert {b["asset"]: (b["available"], b["held"]) for b in again[0].balances} == \
        {"QQQ": (10_000 - held, held)}
    # the order id comes from the request's place in the log, so a rebuilt Place is a copy
    assert again[0].commands[0][0].order_id == first[0].commands[0][0].order_id


def test_a_settlement_replayed_at_its_offset_changes_nothing():
    ex = Exchange()
    fund(ex, 1, "AAA", 1_000)
    fund(ex, 2, "QQQ", 100_000)
    ex.send(place("s", 1, "AAAQQQ", SELL, 90, 4))
    ex.send(place("b", 2, "AAAQQQ", BUY, 100, 4))
    ex.match()
    records = list(ex.settlements)
    ex.settlements.clear()
    for i, record in enumerate(records):
        ex.accounts.apply_settlement(record, 10 + i)
    state = ex.accounts.balances()
    for i, record in enumerate(records):
        ex.accounts.apply_settlement(record, 10 + i)
    assert ex.accounts.balances() == state
    assert ex.totals() == ex.expected_totals()
