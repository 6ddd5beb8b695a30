"""streams.gate: a new order's one-pass way writes the same bytes and makes the same
changes as the general way, over random traffic (rejections, duplicates, replays,
market orders, cancels, amends, funding, settlements, batches)."""
from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.domain import Place
from engine.engine import Engine
from schemas.codec import Codec
from streams.gate import Gate
from streams.keys import user_key, user_partition
from streams.ledger import ORDER_ID_STRIDE, Accounts
from streams.settle import Settlement
from streams.wire import Wire, order_fields
from tests.streams.sim import MARKETS, UNITS, place, request

codec = Codec()
wire = Wire(codec)
N = 2                                   # user partitions
REQUESTS, SETTLEMENTS = "keel.requests", "keel.settlements"
TOPICS = ("orders", "replies", "balances", "dlq")


class Record:
    __slots__ = ("topic", "partition", "offset", "key", "value")

    def __init__(self, topic, partition, offset, key, value) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value = key, value


class Side:
    """One gate, its ledger and what it emitted."""

    def __init__(self, fast: bool) -> None:
        self.accounts = Accounts(UNITS)
        self.out: list = []
        self.gate = Gate(codec, wire, UNITS, self.accounts, N, REQUESTS, TOPICS,
                         self.out.append, fast=fast)
        self.general = 0                    # records that went the general way
        general = self.gate.handle_any

        def counted(message) -> None:
            self.general += 1
            general(message)

        self.gate.handle_any = counted

    def take(self) -> list:
        """What was emitted since the last take, dead letters without their clock."""
        taken = []
        for topic, key, value, partition, headers in self.out:
            if topic == "dlq":
                value = codec.decode("dead_letter", value)
                value.pop("ts")
            taken.append((topic, key, value, partition, headers))
        self.out.clear()
        return taken


class Traffic:
    """The same records to a fast and a general gate, compared after every record; the
    engine and settlement run on the fast gate's orders."""

    def __init__(self) -> None:
        self.fast, self.general = Side(True), Side(False)
        self.offsets: dict = {}
        self.sent: list[Record] = []
        self.engine = Engine(MARKETS, impl="python")
        self.settlement = Settlement(UNITS)
        self.orders: list = []
        self.settlements: list = []
        self.last: list = []                # what the last record emitted
        self.delivered = 0
        self.sources: set = set()

    def deliver(self, record: Record) -> None:
        self.fast.gate.handle(record)
        self.general.gate.handle(record)
        got, want = self.fast.take(), self.general.take()
        assert got == want
        self.last = got
        self.delivered += 1
        for topic, _, value, _, headers in got:
            # the engine drops a command whose keel-source it has seen (a replay's)
            if topic == "orders" and headers[0] not in self.sources:
                self.sources.add(headers[0])
                self.orders.append(codec.decode_command(value)[0])

    def send(self, topic: str, uid: int, value: bytes, partition: int | None = None) -> None:
        if partition is None:
            partition = user_partition(uid, N)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = offset + 1
        record = Record(topic, partition, offset, user_key(uid), value)
        self.sent.append(record)
        self.deliver(record)

    def step(self, matched: int, settled: int) -> None:
        for cmd in self.orders[:matched]:
            for event in self.engine.apply(cmd):
                self.settlements += self.settlement.settle(event)
        del self.orders[:matched]
        for record in self.settlements[:settled]:
            self.send(SETTLEMENTS, record["user_id"], codec.encode("settlement", record))
        del self.settlements[:settled]

    def end_batch(self) -> None:
        fast, general = self.fast.accounts, self.general.accounts
        assert fast._mine.keys() == general._mine.keys()
        for key, user in fast._mine.items():
            # the changelog records reflect the changes each way noted
            assert list(fast.changelog_records(key, copy.deepcopy(user))) == \
                list(general.changelog_records(key, copy.deepcopy(general._mine[key])))
            assert fast._touched[key] == general._touched[key]
        assert fast.users == general.users
        fast.end_batch()
        general.end_batch()


USERS = (1, 2, 3, 4)
PAIRS = ("AAAQQQ", "BBBQQQ", "CCCQQQ")       # the last unknown
ops = st.lists(st.one_of(
    st.tuples(st.just("place"), st.sampled_from(USERS), st.sampled_from(PAIRS),
              st.integers(0, 1), st.sampled_from([0, 0, 0, 1, 2, 7]),
              st.sampled_from([0, 0, 1, 2]), st.one_of(st.integers(90, 110),
                                                       st.integers(-2, 200)),
              st.one_of(st.integers(1, 12), st.integers(-1, 300)), st.integers(0, 900),
              st.integers(0, 3), st.sampled_from([None, None, "a", "b", "é" * 40]),
              st.integers(0, 2**41)),
    st.tuples(st.just("deposit"), st.sampled_from(USERS), st.sampled_from(["AAA", "BBB",
                                                                           "QQQ", "ZZZ"]),
              st.integers(-5, 60_000)),
    st.tuples(st.just("withdraw"), st.sampled_from(USERS), st.sampled_from(["AAA", "QQQ"]),
              st.integers(1, 30_000)),
    st.tuples(st.just("cancel"), st.sampled_from(USERS), st.integers(0, 60),
              st.booleans()),
    st.tuples(st.just("amend"), st.sampled_from(USERS), st.integers(0, 60),
              st.integers(1, 130), st.integers(1, 12)),
    st.tuples(st.just("step"), st.integers(0, 8), st.integers(0, 20)),
    st.tuples(st.just("again"), st.integers(0, 300)),       # same request, a new offset
    st.tuples(st.just("replay"), st.integers(0, 300)),      # a record at its own offset
    st.tuples(st.just("batch")),
    st.tuples(st.just("stray"), st.sampled_from(USERS)),    # on another user's partition
    st.tuples(st.just("damaged"), st.integers(0, 60), st.integers(0, 255)),
), min_size=20, max_size=150)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_both_ways_emit_the_same_bytes_and_state(script):
    t = Traffic()
    for uid in USERS:
        for asset, amount in (("AAA", 2_000), ("BBB", 500), ("QQQ", 80_000)):
            t.send(REQUESTS, uid, codec.encode("order_request", request(
                f"open-{uid}-{asset}", uid, "Deposit", asset=asset, amount=amount * uid,
                reference=None)))
    placed: list = []
    for n, op in enumerate(script):
        kind, rid = op[0], f"r{n % 40}" if n % 5 == 0 else f"r{n}"   # some ids reused
        if kind == "place":
            _, uid, pair, side, okind, tif, price, qty, quote, stp, cid, ts = op
            if okind == 1 and quote:
                qty = 0
            else:
                quote = 0
            req = place(rid, uid, pair, side, price, qty, kind=okind, tif=tif,
                        quote_qty=quote, stp=stp, cid=cid, ts=ts)
        elif kind == "deposit":
            req = request(rid, op[1], "Deposit", asset=op[2], amount=op[3], reference=None)
        elif kind == "withdraw":
            req = request(rid, op[1], "Withdraw", asset=op[2], amount=op[3],
                          destination=None)
        elif kind in ("cancel", "amend"):
            if not placed:
                continue
            owner, pair, oid, cid = placed[op[2] % len(placed)]
            by_cid = kind == "cancel" and op[3] and cid is not None
            body = {"pair": pair, "order_id": None if by_cid else oid,
                    "client_order_id": cid if by_cid else None}
            if kind == "cancel":
                req = request(rid, owner if op[3] else op[1], "CancelOrder", **body)
            else:
                req = request(rid, owner, "AmendOrder", new_price=op[3], new_qty=op[4], **body)
        elif kind == "step":
            t.step(op[1], op[2])
            continue
        elif kind in ("again", "replay"):
            earlier = [r for r in t.sent if r.topic == REQUESTS]
            record = earlier[op[1] % len(earlier)]
            if kind == "again":
                t.send(REQUESTS, int(record.key), record.value)
            else:
                t.deliver(record)
            continue
        elif kind == "batch":
            t.end_batch()
            continue
        elif kind == "stray":
            uid = op[1]
            data = codec.encode("order_request", place(rid, uid, "AAAQQQ", 0, 100, 1))
            t.send(REQUESTS, uid, data, partition=1 - user_partition(uid, N))
            continue
        else:                                       # a new order's bytes, one byte changed
            data = bytearray(codec.encode("order_request", place(rid, 1, "AAAQQQ", 0, 100,
                                                                 2)))
            data[op[1] % len(data)] = op[2]
            t.send(REQUESTS, 1, bytes(data))
            continue
        t.send(REQUESTS, req["user_id"], codec.encode("order_request", req))
        if kind == "place":
            record = t.sent[-1]
            oid = (record.offset + 1) * ORDER_ID_STRIDE + record.partition
            if str(oid) in t.fast.accounts.user(req["user_id"])["o"]:
                placed.append((req["user_id"], req["body"][1]["pair"], oid,
                               req["body"][1]["client_order_id"]))
    t.step(10**6, 10**6)
    t.end_batch()
    assert t.fast.accounts.users == t.general.accounts.users
    assert t.general.general == t.delivered     # every record went the general way there


def test_an_accepted_order_takes_one_pass_and_writes_the_codecs_bytes():
    t = Traffic()
    t.send(REQUESTS, 5, codec.encode("order_request", request(
        "fund", 5, "Deposit", asset="QQQ", amount=10**9, reference=None)))
    req = place("é-order", 5, "AAAQQQ", 0, 101, 7, cid="mine", ts=1_700_000_000_123)
    t.send(REQUESTS, 5, codec.encode("order_request", req))
    record = t.sent[-1]
    assert t.fast.general == 1                  # only the deposit went the general way
    assert t.general.general == 2
    oid = (record.offset + 1) * ORDER_ID_STRIDE + record.partition
    avail, held, version = t.fast.accounts.user(5)["b"]["QQQ"]
    assert held > 0 and avail + held == 10**9 and version == 2
    body = req["body"][1]
    place_cmd = Place("AAAQQQ", oid, 5, 0, 0, 0, 101, 7, 0, 0, req["ts"])
    assert t.last == [
        ("orders", b"AAAQQQ", codec.encode_command(place_cmd, "é-order"), 0,
         [("keel-source", b"%d:%d" % (record.partition, record.offset))]),
        ("replies", "é-order".encode(), codec.encode("reply", {
            "request_id": "é-order", "user_id": 5, "ts": req["ts"], "code": 0, "message": "",
            "pair": "AAAQQQ", "order_id": oid, "client_order_id": body["client_order_id"]}),
         None, None),
        ("balances", b"5:QQQ", codec.encode("balance", {
            "user_id": 5, "asset": "QQQ", "available": avail, "held": held,
            "version": version, "ts": req["ts"]}), user_partition(5, N), None)]


def test_an_overlong_varint_is_read_by_the_codec_and_answered_in_its_bytes():
    req = place("r", 1, "AAAQQQ", 0, 100, 2)
    data = codec.encode("order_request", req)
    fields = order_fields(data, len(wire.request_header))
    uid_at = fields[12]                         # the user id's one byte
    assert data[uid_at] == 2                    # zigzag(1)
    overlong = data[:uid_at] + bytes((0x82, 0x00)) + data[uid_at + 1:]
    assert codec.decode("order_request", overlong) == req
    assert wire.new_order(overlong) is None
    t = Traffic()
    t.send(REQUESTS, 1, codec.encode("order_request", request(
        "fund", 1, "Deposit", asset="QQQ", amount=10**9, reference=None)))
    t.send(REQUESTS, 1, overlong)
    assert t.fast.general == 2
    record = t.sent[-1]
    oid = (record.offset + 1) * ORDER_ID_STRIDE + record.partition
    assert t.last[0][2] == codec.encode_command(
        Place("AAAQQQ", oid, 1, 0, 0, 0, 100, 2, 0, 0, 1_000), "r")


def test_an_order_needs_its_whole_hold_available_either_way():
    from streams.holds import hold_for
    need = hold_for(UNITS.pairs["AAAQQQ"], 0, 0, 100, 3, 0)[1]
    for uid, funds in ((1, need), (2, need - 1)):
        t = Traffic()
        t.send(REQUESTS, uid, codec.encode("order_request", request(
            "fund", uid, "Deposit", asset="QQQ", amount=funds, reference=None)))
        t.send(REQUESTS, uid, codec.encode("order_request",
                                           place("o", uid, "AAAQQQ", 0, 100, 3)))
        reply = codec.decode("reply", t.last[-2 if funds == need else -1][2])
        assert reply["code"] == (0 if funds == need else -2010)
        assert t.fast.general == (1 if funds == need else 2)
