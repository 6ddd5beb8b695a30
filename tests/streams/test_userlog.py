"""streams.userlog: the accounts' users on the changelog as a snapshot and their changes.

What is checked: a batch writes one record a user, mostly its changes since the snapshot;
folding the log (whole, compacted, or cut after any record of a batch, as a crash leaves
it) gives back every user as the ledger holds it, or as the batch before left it; the old
whole-value format is read and carried on from."""
from __future__ import annotations

import copy
import random

import orjson

from engine.domain import ResultCode
from streams.ledger import RECENT, Accounts
from streams.userlog import fold, records
from tests.streams.sim import UNITS, Exchange, place, request
from tests.streams.test_properties import random_script, run

BUY = 0


def written(accounts: Accounts, log: list) -> None:
    """End a batch as the worker does: each user it touched goes to the log (as bytes
    would: later changes to the user do not reach records already written)."""
    for key in list(accounts._mine):
        log.extend(copy.deepcopy(list(accounts.changelog_records(key, accounts.users[key]))))
    accounts.end_batch()


def folded(log: list) -> dict:
    data: dict = {}
    for key, value in copy.deepcopy(log):
        fold(data, key, value)
    return data


def compacted(log: list) -> list:
    """The log as compaction leaves it: each key's last record, in log order."""
    last = {key: i for i, (key, _) in enumerate(log)}
    return [rec for i, rec in enumerate(log) if last[rec[0]] == i]


def same_users(data: dict, users: dict) -> None:
    assert data.keys() == users.keys()
    for key, user in users.items():
        for part in ("b", "o", "c", "r", "w", "s", "n", "d"):
            assert data[key][part] == user[part], (key, part)


def funded(uid: int = 1, amount: int = 10**9) -> tuple[Accounts, list]:
    accounts, log = Accounts(UNITS), []
    accounts.handle_request(request("d", uid, "Deposit", asset="QQQ", amount=amount,
                                    reference=None), 0, 0)
    written(accounts, log)
    return accounts, log


def test_a_batch_writes_one_record_a_user_and_mostly_only_its_changes():
    accounts, log = funded()
    for i in range(50):                     # a user with many open orders and ids
        accounts.handle_request(place(f"p{i}", 1, "AAAQQQ", BUY, 100, 2), 0, 1 + i)
    written(accounts, log)
    offset = 60
    while log[-1][0] != "1":                # until the changes outgrow a snapshot
        accounts.handle_request(place(f"q{offset}", 1, "AAAQQQ", BUY, 100, 2), 0, offset)
        offset += 1
        written(accounts, log)
    snapshot = log[-1][1]
    assert snapshot["g"] >= 1 and len(snapshot["o"]) > 50
    out = accounts.handle_request(place("last", 1, "AAAQQQ", BUY, 100, 2), 0, offset)
    oid = str(out.replies[0]["order_id"])
    written(accounts, log)
    [(key, changes)] = log[-1:]
    assert key == "1:x" and changes["g"] == snapshot["g"]
    assert changes["o"] == {oid: accounts.users["1"]["o"][oid]} and changes["c"] == {}
    assert changes["r"] == {"last": 1} and changes["b"] == accounts.users["1"]["b"]
    assert 10 * len(orjson.dumps(changes)) < len(orjson.dumps(snapshot))
    same_users(folded(log), accounts.users)


def test_a_closed_order_and_a_forgotten_request_id_are_written_as_dropped():
    accounts, log = funded()
    out = accounts.handle_request(place("p", 1, "AAAQQQ", BUY, 100, 2), 0, 1)
    oid = out.replies[0]["order_id"]
    for i in range(30):                      # enough entries for a changes record
        accounts.handle_request(place(f"o{i}", 1, "AAAQQQ", BUY, 100, 2), 0, 2 + i)
    written(accounts, log)
    offset = 40
    while log[-1][0] != "1":                 # then a fresh snapshot
        accounts.handle_request(request(f"n{offset}", 1, "CancelAllOrders", pair="BBBQQQ"),
                                0, offset)
        offset += 1
        written(accounts, log)
    accounts.apply_settlement({"user_id": 1, "pair": "AAAQQQ", "seq": 1, "reason": 1,
                               "order_id": oid, "ts": 1, "entries": []}, 0)
    written(accounts, log)
    assert log[-1][0] == "1:x" and log[-1][1]["o"] == {str(oid): None}
    for i in range(RECENT):
        accounts.handle_request(request(f"x{i}", 1, "CancelAllOrders", pair="AAAQQQ"), 0,
                                100 + i)
        written(accounts, log)
    assert ("1:x", "d") in {(key, rid) for key, value in log if key == "1:x"
                            for rid, v in value["r"].items() if v is None}
    data = folded(log)
    assert "d" not in data["1"]["r"] and len(data["1"]["r"]) == RECENT
    same_users(data, accounts.users)
    same_users(folded(compacted(log)), accounts.users)


def test_a_full_request_id_window_costs_a_small_record_a_request():
    # what grew to ~15 KB a request in production: a user with RECENT ids and open orders
    accounts, log = funded()
    for i in range(100):
        accounts.handle_request(place(f"p{i}", 1, "AAAQQQ", BUY, 100, 2), 0, 1 + i)
    written(accounts, log)
    for i in range(2 * RECENT):              # one request a batch, as at a low rate
        accounts.handle_request(request(f"x{i}", 1, "CancelAllOrders", pair="AAAQQQ"), 0,
                                200 + i)
        written(accounts, log)
    whole = len(orjson.dumps({part: accounts.users["1"][part] for part in "bocrwsnd"}))
    last = [len(orjson.dumps(value)) for _, value in log[-RECENT:]]
    assert whole > 12_000 and 8 * sum(last) / len(last) < whole
    assert {key for key, _ in log[-RECENT:]} == {"1", "1:x"}       # snapshots still come
    same_users(folded(log), accounts.users)
    same_users(folded(compacted(log)), accounts.users)


def test_folding_the_log_gives_back_every_user_over_a_random_run():
    script, opening = random_script(seed=11, n=3_000)
    ex = Exchange()
    log: list = []
    rnd = random.Random(3)
    due = [rnd.randint(1, 40)]
    accounts = ex.accounts

    def batched(apply):
        def step(*args):
            out = apply(*args)
            due[0] -= 1
            if not due[0]:               # a batch ends every 1-40 records, mixed kinds
                written(accounts, log)
                due[0] = rnd.randint(1, 40)
            return out
        return step

    accounts.handle_request = batched(accounts.handle_request)
    accounts.apply_settlement = batched(accounts.apply_settlement)
    run(ex, script, opening)
    ex.drain()
    written(accounts, log)
    assert accounts.open_orders() and any(type(e).__name__ == "Trade" for e in ex.events)
    assert {key.endswith(":x") for key, _ in log} == {True, False}   # both kinds written
    same_users(folded(log), accounts.users)
    same_users(folded(compacted(log)), accounts.users)


def test_a_log_cut_after_any_record_of_a_batch_leaves_each_user_as_before_or_after():
    # a crash keeps some of a batch's records: each is a whole user's state or changes
    accounts, log = funded()
    accounts.handle_request(request("d2", 2, "Deposit", asset="QQQ", amount=10**9,
                                    reference=None), 0, 1)
    oids = [accounts.handle_request(place(f"p{i}", 1, "AAAQQQ", BUY, 100, 2), 0, 2 + i)
            .replies[0]["order_id"] for i in range(3)]
    written(accounts, log)
    before = copy.deepcopy(accounts.users)
    accounts.apply_settlement({"user_id": 1, "pair": "AAAQQQ", "seq": 1, "reason": 1,
                               "order_id": oids[0], "ts": 1, "entries": []}, 0)
    for uid in (1, 2):
        accounts.handle_request(place(f"q{uid}", uid, "AAAQQQ", BUY, 100, 2), 0, 10 + uid)
    start = len(log)
    written(accounts, log)
    after = copy.deepcopy(accounts.users)
    assert [key for key, _ in log[start:]] == ["1", "2:x"]   # one record a user
    for cut in range(start, len(log) + 1):
        data = folded(log[:cut])
        for key in after:
            got = {part: data[key][part] for part in ("b", "o", "c", "r", "n", "d")}
            old = {part: before[key][part] for part in got}
            new = {part: after[key][part] for part in got}
            assert got in (old, new), (cut, key)


def test_old_whole_values_are_read_and_the_worker_carries_on():
    # what the previous format left on the changelog: each user written whole, no "g"
    accounts, _ = funded()
    cid_order = accounts.handle_request(place("p1", 1, "AAAQQQ", BUY, 100, 2, cid="c1"),
                                        0, 1).replies[0]["order_id"]
    accounts.end_batch()
    old = {part: copy.deepcopy(accounts.users["1"][part]) for part in "bocrwsnd"}
    log = [("1", old)]
    data = folded(log)
    assert data["1"]["r"] == {"d": 1, "p1": 1} and data["1"]["g"] == 0
    # a successor over the recovered table: an old id is still a duplicate, the old
    # client id and its open order are still known
    successor = Accounts(UNITS, data)
    dup = successor.handle_request(request("d", 1, "Deposit", asset="QQQ", amount=5,
                                           reference=None), 0, 2)
    assert dup.replies[0]["code"] == ResultCode.DUPLICATE_REQUEST
    cancel = successor.handle_request(request("x", 1, "CancelOrder", pair="AAAQQQ",
                                              order_id=None, client_order_id="c1"), 0, 3)
    assert cancel.replies[0]["code"] == 0 and cancel.commands[0][0].order_id == cid_order
    more = successor.handle_request(place("p2", 1, "AAAQQQ", BUY, 100, 2), 0, 4)
    assert more.replies[0]["code"] == 0
    written(successor, log)
    # carried on as changes to the old value, which stays the snapshot (generation 0)
    assert log[-1][0] == "1:x" and log[-1][1]["g"] == 0
    for log_now in (log, compacted(log)):
        same_users(folded(log_now), successor.users)
    again = Accounts(UNITS, folded(log)).handle_request(
        request("p1", 1, "Deposit", asset="QQQ", amount=5, reference=None), 0, 5)
    assert again.replies[0]["code"] == ResultCode.DUPLICATE_REQUEST


def test_changes_older_than_the_snapshot_are_skipped():
    user = {"b": {"QQQ": [1, 0, 1]}, "o": {"5": ["AAAQQQ", 0, "QQQ", 1, None]}, "c": {},
            "r": {"a": 1}, "w": {}, "s": {}, "n": {"requests": 3}, "d": {}, "g": 2}
    stale = {"g": 1, "b": {"QQQ": [9, 9, 9]}, "w": {}, "s": {}, "n": {}, "d": {},
             "o": {"5": None}, "c": {}, "r": {}}
    data = folded([("7", user), ("7:x", stale)])
    assert data["7"]["o"] == user["o"] and data["7"]["b"] == user["b"]
    assert folded([("7:x", stale)]) == {}       # its snapshot was compacted away
    [(key, record)] = list(records("7", data["7"], ()))
    assert key == "7:x" and record["g"] == 2 and record["o"] == {}
