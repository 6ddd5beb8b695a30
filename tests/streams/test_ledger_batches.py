"""The ledger in batches, as the accounts worker drives it: a batch's users are written
back once at its end, and a replay after a crash between the state write and the outputs
rebuilds every output of the batch it repeats (the changelog format: test_userlog)."""
from __future__ import annotations

import copy
from contextlib import nullcontext

from streams.ledger import Accounts
from streams.staged import Staged
from tests.streams.sim import UNITS, place, request

BUY = 0


def write_back(users: Staged, accounts: Accounts) -> None:
    users.write_back(lambda event: nullcontext())
    accounts.end_batch()


def funded(amount: int) -> tuple[dict, Staged, Accounts]:
    """A table, its staging and the accounts over it, user 1 holding `amount` written back."""
    table: dict = {}
    users = Staged(table)
    accounts = Accounts(UNITS, users)
    accounts.handle_request(deposit("d", 1, amount), 0, 0)
    write_back(users, accounts)
    return table, users, accounts


def deposit(rid: str, uid: int, amount: int) -> dict:
    return request(rid, uid, "Deposit", asset="QQQ", amount=amount, reference=None)


def test_a_batch_writes_back_each_user_it_touched_once_at_its_end():
    table, users, accounts = funded(100_000)
    out = accounts.handle_request(place("p", 1, "AAAQQQ", BUY, 100, 2), 0, 1)
    accounts.handle_request(place("q", 1, "AAAQQQ", BUY, 100, 2), 0, 2)
    assert out.commands and out.replies[0]["code"] == 0
    assert list(users.pending) == ["1"]            # one write for the user, at the end
    write_back(users, accounts)
    assert not users.pending
    assert table["1"]["b"]["QQQ"][1] > 0     # the hold is in the table now


def test_decisions_are_kept_for_the_batch_in_hand_and_the_one_before_only():
    # streams.app writes a batch's state while the previous batch's outputs may still be
    # on their way: a replay of that batch needs its decisions
    table, users, accounts = funded(10**6)             # batch 1: the deposit at offset 0
    for offset in (5, 6, 7):
        accounts.handle_request(place(f"p{offset}", 1, "AAAQQQ", BUY, 100, 2), 0, offset)
    write_back(users, accounts)
    assert sorted(table["1"]["d"]) == ["0", "5", "6", "7"]
    accounts.handle_request(place("p9", 1, "AAAQQQ", BUY, 100, 2), 0, 9)
    write_back(users, accounts)
    assert sorted(table["1"]["d"]) == ["5", "6", "7", "9"]   # offset 0's decision is gone
    accounts.handle_request(place("p12", 1, "AAAQQQ", BUY, 100, 2), 0, 12)
    write_back(users, accounts)
    assert sorted(table["1"]["d"]) == ["12", "9"]


def test_a_replayed_batch_rebuilds_its_outputs_from_the_written_state():
    table, users, accounts = funded(10**6)
    batch = [(place(f"p{i}", 1, "AAAQQQ", BUY, 100, 2), 10 + i) for i in range(3)]
    batch.append((place("big", 1, "AAAQQQ", BUY, 100, 10**7), 13))   # insufficient
    first = [accounts.handle_request(r, 0, offset) for r, offset in batch]
    write_back(users, accounts)
    state = copy.deepcopy(table)
    # the worker dies before the outputs are sent; its successor replays the batch
    # from the committed offset against the written state, in batches of its own
    successor_users = Staged(table)
    successor = Accounts(UNITS, successor_users)
    again = [successor.handle_request(r, 0, offset) for r, offset in batch[:2]]
    write_back(successor_users, successor)
    again += [successor.handle_request(r, 0, offset) for r, offset in batch[2:]]
    write_back(successor_users, successor)
    for one, two in zip(first, again, strict=True):
        assert two.commands == one.commands and two.replies == one.replies
    assert [len(o.commands) for o in again] == [1, 1, 1, 0]
    assert table["1"]["b"] == state["1"]["b"] and table["1"]["o"] == state["1"]["o"]
