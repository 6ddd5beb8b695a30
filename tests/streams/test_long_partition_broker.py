"""An accounts worker on a long keel.requests partition still reads it (real broker).

tansu lists every batch of a partition for each fetch that finds data and answers nothing
when that outlasts the fetch wait (README, the embedded broker's quirks): 20k single-record
batches (what the gateway leaves on a user's partition after hours at a low rate) are past
what the worker's 10 ms wait gets any answer for, at start and after. streams/starving.py
must widen the wait so the backlog and what follows it are read.
"""
from __future__ import annotations

from streams.keys import user_key, user_partition
from tests.long_partition import produce_one_per_batch
from tests.streams.sim import request

BATCHES = 20_000
UID = 77


def _one_per_batch(client, requests) -> None:
    settings = client.settings
    produce_one_per_batch(settings.bootstrap, settings.topic("requests"),
                          (client.codec.encode("order_request", r) for r in requests),
                          user_partition(UID, settings.user_partitions), user_key(UID))


def _deposit(rid: str) -> dict:
    return request(rid, UID, "Deposit", asset="USDT", amount=1, reference=None)


def test_a_worker_reads_a_long_partition_and_what_follows(workers, client):
    _one_per_batch(client, (_deposit(f"d{i}") for i in range(BATCHES)))
    proc = workers.start("accounts")
    decode = lambda v: client.codec.decode("reply", v)  # noqa: E731
    replies = client.read("replies", decode, lambda got: len(got) >= BATCHES)
    _one_per_batch(client, [_deposit("late")])
    replies = client.read("replies", decode,
                          lambda got: any(r["request_id"] == "late" for r in got))
    assert {r["request_id"] for r in replies} == {f"d{i}" for i in range(BATCHES)} | {"late"}
    assert all(r["code"] == 0 for r in replies)
    workers.stop(proc)
    assert "fetch wait widened" in workers.logs()
