"""accounts as a real `keel streams accounts` worker on the embedded broker."""
from __future__ import annotations

import signal
from collections import Counter

from engine.domain import Place, ResultCode
from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS
from streams.holds import hold_for
from streams.units import Units
from tests.streams.sim import place, request

UNITS = Units.from_markets(load_markets(DEFAULT_MARKETS))
PAIRS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
# a limit buy per pair, each needing about the same USDT
ORDERS = {"BTCUSDT": (6_500_000, 10), "ETHUSDT": (350_000, 20), "SOLUSDT": (15_000, 45)}


def test_a_user_funded_for_one_order_gets_exactly_one_forwarded(workers, client):
    holds = {p: hold_for(UNITS.pairs[p], 0, 0, *ORDERS[p], 0)[1] for p in PAIRS}
    funded = max(holds.values())                   # any one order fits, no two do
    assert all(2 * h > funded for h in holds.values())
    workers.start("accounts")
    uid = 42
    client.send_request(request("fund", uid, "Deposit", asset="USDT", amount=funded,
                                reference=None))
    n = 30
    for i in range(n):
        pair = PAIRS[i % 3]
        client.send_request(place(f"o{i}", uid, pair, 0, *ORDERS[pair]))
    client.flush()
    codec = client.codec
    replies = client.read("replies", lambda v: codec.decode("reply", v),
                          lambda got: len(got) >= n + 1)
    codes = Counter(r["code"] for r in replies if r["request_id"] != "fund")
    assert codes == {0: 1, int(ResultCode.INSUFFICIENT_BALANCE): n - 1}
    [accepted] = [r for r in replies if r["code"] == 0 and r["request_id"] != "fund"]
    orders = client.read("orders", codec.decode_command, lambda got: len(got) >= 1)
    [(cmd, rid)] = orders
    assert isinstance(cmd, Place) and rid == accepted["request_id"]
    assert cmd.order_id == accepted["order_id"] and cmd.user_id == uid
    balances = client.read("balances", lambda v: codec.decode("balance", v),
                           lambda got: any(b["held"] for b in got))
    last = max(balances, key=lambda b: b["version"])
    assert (last["available"], last["held"]) == (funded - holds[cmd.pair], holds[cmd.pair])


def test_a_killed_worker_recovers_its_state_from_the_changelog(workers, client):
    codec = client.codec
    decode = lambda v: codec.decode("reply", v)  # noqa: E731
    first = workers.start("accounts")
    uid, amount = 9, 10**9
    client.send_request(request("d1", uid, "Deposit", asset="USDT", amount=amount,
                                reference=None))
    client.send_request(place("p1", uid, "BTCUSDT", 0, 6_500_000, 10, cid="c1"))
    client.flush()
    replies = client.read("replies", decode, lambda got: len(got) >= 2)
    order_id = [r for r in replies if r["request_id"] == "p1"][0]["order_id"]
    held = hold_for(UNITS.pairs["BTCUSDT"], 0, 0, 6_500_000, 10, 0)[1]
    workers.stop(first, signal.SIGKILL)
    workers.start("accounts")
    client.send_request(request("d1", uid, "Deposit", asset="USDT", amount=amount,
                                reference=None))                       # a retry
    client.send_request(place("p2", uid, "BTCUSDT", 0, 6_500_000, 10, cid="c1"))
    client.send_request(request("w1", uid, "Withdraw", asset="USDT", amount=amount - held + 1,
                                destination=None))
    client.send_request(request("w2", uid, "Withdraw", asset="USDT", amount=amount - held,
                                destination=None))
    client.send_request(place("p3", uid, "BTCUSDT", 1, 6_600_000, 10))   # no BTC
    client.send_request(request("d2", uid, "Deposit", asset="BTC", amount=10**6,
                                reference=None))
    client.send_request(place("p4", uid, "BTCUSDT", 1, 6_600_000, 10))
    client.send_request(request("x", uid, "CancelOrder", pair="BTCUSDT", order_id=None,
                                client_order_id="c1"))
    client.flush()
    # Replies are at-least-once (a replayed request's reply comes again); the last reply of
    # a request id is its answer, and d1's retry is answered after d1 itself.
    want = {"d1", "p2", "w1", "w2", "p3", "d2", "p4", "x"}
    replies = client.read("replies", decode, lambda got: (
        want <= {r["request_id"] for r in got[2:]}
        and any(r["request_id"] == "d1" and r["code"] for r in got)))
    code = {r["request_id"]: r["code"] for r in replies if r["request_id"] in want}
    assert code == {"d1": ResultCode.DUPLICATE_REQUEST,
                    "p2": ResultCode.DUPLICATE_CLIENT_ORDER_ID,
                    "w1": ResultCode.INSUFFICIENT_BALANCE, "w2": 0,
                    "p3": ResultCode.INSUFFICIENT_BALANCE, "d2": 0, "p4": 0, "x": 0}
    new_id = [r for r in replies if r["request_id"] == "p4"][0]["order_id"]
    assert new_id != order_id                       # the order counter came back too
    # replies are at-least-once: a request replayed after a crash has its reply rebuilt
    # from the state and sent again, identical
    copies = [r for r in replies if r["request_id"] == "x"]
    assert all(c == copies[0] for c in copies)
    cancel = copies[0]
    assert cancel["order_id"] == order_id           # and the client order id map


def test_a_worker_carries_on_from_users_written_in_the_old_format(workers, client,
                                                                  stream_settings):
    # The changelog of a deployment from before streams.userlog holds each user whole
    # (no generation): a new worker reads it as it is and carries on, across a crash.
    import orjson
    from confluent_kafka import Producer

    from infra.kafka import admin_client, producer_config
    from streams.keys import user_partition
    from streams.ledger import ORDER_ID_STRIDE

    codec = client.codec
    decode = lambda v: codec.decode("reply", v)  # noqa: E731
    first = workers.start("accounts")
    client.send_request(request("warm", 1, "Deposit", asset="USDT", amount=1, reference=None))
    client.flush()
    client.read("replies", decode, lambda got: len(got) >= 1)
    workers.stop(first)
    [changelog] = [t for t in admin_client(stream_settings, log_level=0).list_topics().topics
                   if t.startswith(stream_settings.topic_prefix) and t.endswith("users-changelog")]
    uid, held, avail = 11, 650_000_000, 10**9
    partition = user_partition(uid, stream_settings.user_partitions)
    oid = 777 * ORDER_ID_STRIDE + partition
    old = {"b": {"USDT": [avail, held, 3]},
           "o": {str(oid): ["BTCUSDT", 0, "USDT", held, "c1"]}, "c": {"c1": oid},
           "r": {"old1": 1, "old2": 1}, "w": {}, "s": {}, "n": {}, "d": {}}
    producer = Producer(producer_config(stream_settings, "old-worker"))
    producer.produce(changelog, key=orjson.dumps(str(uid)), value=orjson.dumps(old),
                     partition=partition)
    assert producer.flush(30) == 0
    second = workers.start("accounts")
    client.send_request(request("old1", uid, "Deposit", asset="USDT", amount=5,
                                reference=None))                     # a retry of an old id
    client.send_request(request("x", uid, "CancelOrder", pair="BTCUSDT", order_id=None,
                                client_order_id="c1"))
    client.send_request(request("new1", uid, "Deposit", asset="USDT", amount=7,
                                reference=None))
    client.flush()
    replies = client.read("replies", decode, lambda got: {"old1", "x", "new1"}
                          <= {r["request_id"] for r in got})
    code = {r["request_id"]: r for r in replies}
    assert code["old1"]["code"] == ResultCode.DUPLICATE_REQUEST
    assert code["x"]["code"] == 0 and code["x"]["order_id"] == oid
    assert code["new1"]["code"] == 0
    workers.stop(second, signal.SIGKILL)
    workers.start("accounts")
    for rid in ("old2", "new1"):                                   # both kinds of id
        client.send_request(request(rid, uid, "Deposit", asset="USDT", amount=5,
                                    reference=None))
    client.send_request(request("w1", uid, "Withdraw", asset="USDT", amount=avail + 8,
                                destination=None))
    client.send_request(request("w2", uid, "Withdraw", asset="USDT", amount=avail + 7,
                                destination=None))
    client.flush()
    want = {"old2", "w1", "w2"}
    replies = client.read("replies", decode, lambda got: want <= {r["request_id"] for r in got}
                          and sum(r["request_id"] == "new1" for r in got) >= 2)
    code = {r["request_id"]: r["code"] for r in replies}
    assert code == {"warm": 0, "old1": ResultCode.DUPLICATE_REQUEST, "x": 0,
                    "new1": ResultCode.DUPLICATE_REQUEST,
                    "old2": ResultCode.DUPLICATE_REQUEST,
                    "w1": ResultCode.INSUFFICIENT_BALANCE, "w2": 0}
    balances = client.read("balances", lambda v: codec.decode("balance", v),
                           lambda got: any(b["user_id"] == uid and b["held"] == held + avail + 7
                                           for b in got))
    last = max((b for b in balances if b["user_id"] == uid), key=lambda b: b["version"])
    assert (last["available"], last["held"]) == (0, held + avail + 7)
    # at INFO each worker told where it stood: the second one recovered both users, the
    # old-format one included, before it processed anything
    def told_by(n: int) -> list[dict]:
        # JSON lines; the terminal reset Faust prints at exit may precede one
        text = (workers.log_dir / f"accounts-{n}.log").read_text(errors="replace")
        return [orjson.loads(line[line.index("{"):]) for line in text.splitlines()
                if "{" in line]
    told = told_by(1)
    said = [t["msg"] for t in told if t.get("logger") == "streams.lifecycle"]
    assert "partitions assigned" in said, said
    recovered = [t["keys"] for t in told if t["msg"] == "tables recovered, processing"]
    assert recovered and recovered[0] == {"users": 2}, recovered
    # the first worker, stopped by SIGTERM, left the group (its successor need not wait
    # out its session); the SIGKILLed second one could not
    assert "left the consumer group" in [t["msg"] for t in told_by(0)], told_by(0)
    assert "left the consumer group" not in [t["msg"] for t in told]
