"""Helpers for the end-to-end streams tests: random traffic, quiescence, balance views."""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, TopicPartition

from engine.service.config import group_id as engine_group
from infra.kafka import consumer_config
from infra.settings import Settings
from schemas.codec import Codec
from streams.compat import read_records, read_to_end
from tests.streams.sim import place, request

MIDS = {"BTCUSDT": (6_500_000, 8, 40), "ETHUSDT": (350_000, 15, 60), "SOLUSDT": (15_000, 34, 120)}
OPENING = {"USDT": 10_000 * 10**8, "BTC": 10**8, "ETH": 10 * 10**8, "SOL": 100 * 10**8}


class Traffic:
    """Seeded requests of many users: deposits, withdrawals and their results, orders."""

    def __init__(self, seed: int, users: int) -> None:
        self.rnd = random.Random(seed)
        self.users = list(range(1, users + 1))
        self.n = 0
        self.withdrawals: dict[str, tuple[int, str, int]] = {}

    def rid(self, what: str) -> str:
        self.n += 1
        return f"{what}-{self.n}"

    def opening(self) -> list[dict]:
        return [request(self.rid("dep"), uid, "Deposit", asset=a, amount=amt, reference=None)
                for uid in self.users for a, amt in OPENING.items()]

    def order(self) -> dict:
        rnd = self.rnd
        pair = rnd.choice(list(MIDS))
        mid, lo, hi = MIDS[pair]
        side = rnd.randint(0, 1)
        price = mid + rnd.randint(-mid // 200, mid // 200)
        qty = rnd.randint(lo, hi)
        uid = rnd.choice(self.users)
        roll = rnd.random()
        if roll < 0.1:          # IOC limit
            return place(self.rid("o"), uid, pair, side, price, qty, tif=1)
        if roll < 0.15:         # market with a protection price
            return place(self.rid("o"), uid, pair, side, price, qty, kind=1)
        return place(self.rid("o"), uid, pair, side, price, qty)

    def funding(self) -> dict:
        rnd, uid = self.rnd, self.rnd.choice(self.users)
        asset = rnd.choice(list(OPENING))
        if rnd.random() < 0.5:
            return request(self.rid("dep"), uid, "Deposit", asset=asset,
                           amount=rnd.randint(1, OPENING[asset] // 10), reference=None)
        rid = self.rid("wd")
        amount = rnd.randint(1, OPENING[asset] // 3)
        self.withdrawals[rid] = (uid, asset, amount)
        return request(rid, uid, "Withdraw", asset=asset, amount=amount, destination=None)

    def results(self) -> list[dict]:
        out = []
        for wid, (uid, asset, amount) in self.withdrawals.items():
            out.append(request(self.rid("res"), uid, "WithdrawalResult",
                               withdrawal_request_id=wid, asset=asset, amount=amount,
                               completed=self.rnd.random() < 0.6, reference=None))
        return out

    def cancel_all(self) -> list[dict]:
        return [request(self.rid("end"), uid, "CancelAllOrders", pair=pair)
                for uid in self.users for pair in MIDS]


def expected_totals(requests: list[dict], replies: list[dict]) -> Counter:
    """deposits - completed withdrawals, counting only requests answered OK."""
    ok = {r["request_id"] for r in replies if r["code"] == 0}
    total: Counter = Counter()
    for req in requests:
        kind, body = req["body"]
        if req["request_id"] not in ok:
            continue
        if kind.endswith("Deposit"):
            total[body["asset"]] += body["amount"]
        elif kind.endswith("WithdrawalResult") and body["completed"]:
            total[body["asset"]] -= body["amount"]
    return total


def latest(balances: list[dict]) -> dict[tuple[int, str], dict]:
    out: dict[tuple[int, str], dict] = {}
    for b in balances:
        key = (b["user_id"], b["asset"])
        if key not in out or b["version"] > out[key]["version"]:
            out[key] = b
    return out


def totals(balances: list[dict]) -> tuple[Counter, Counter]:
    avail_held: Counter = Counter()
    held: Counter = Counter()
    for b in latest(balances).values():
        avail_held[b["asset"]] += b["available"] + b["held"]
        held[b["asset"]] += b["held"]
    return avail_held, held


def lags(settings: Settings, group: str, topic: str, partitions: int) -> list[int]:
    """Per partition, how many readable (read_committed) records lie at or past the group's
    committed offset. Counted by reading, not from the watermark: tansu 0.6 lists a
    partition's end as its last batch's base + 1, and commit markers of several
    transactional writers sit between records, so `high - committed` says little."""
    c = Consumer(consumer_config(settings, group, f"lag-{uuid.uuid4().hex[:6]}"))
    reader = Consumer({"bootstrap.servers": settings.bootstrap,
                       "group.id": f"lag-reader-{uuid.uuid4().hex[:6]}",
                       "isolation.level": "read_committed", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        out = []
        for tp in c.committed(tps, timeout=10):
            out.append(sum(1 for _ in read_to_end(reader, topic, tp.partition,
                                                   max(tp.offset, 0))))
        return out
    finally:
        reader.close()
        c.close()


def wait_quiescent(settings: Settings, markets_partitions: int, check=lambda: None,
                   wait: float = 900.0, progress=None) -> None:
    """Every stage has consumed its whole input: no readable record at or past any
    group's committed offset. Seen twice in a row, a second apart."""
    n_users = settings.user_partitions
    plan = [(f"{settings.topic_prefix}streams-accounts", "requests", n_users),
            (f"{settings.topic_prefix}streams-accounts", "settlements", n_users),
            (engine_group(settings.topic_prefix), "orders", markets_partitions),
            (f"{settings.topic_prefix}streams-settlement", "events", markets_partitions)]
    deadline, calm, seen = time.monotonic() + wait, 0, {}
    while calm < 2:
        check()
        if time.monotonic() > deadline:
            raise AssertionError(f"the pipeline never caught up: lags {seen}")
        seen = {t: lags(settings, g, settings.topic(t), n) for g, t, n in plan}
        if progress is not None:
            progress(seen)
        ok = all(max(seen[t]) == 0 for _, t, _ in plan)
        calm = calm + 1 if ok else 0
        time.sleep(1.0)


def explain_missing_replies(settings: Settings, sent: list[dict], replies: list[dict]) -> str:
    """Why some requests have no reply (for a failure message): where those requests sit
    in keel.requests against the accounts group's commit, and whether their replies are on
    keel.replies for a read_uncommitted reader though not for the test's read_committed one."""
    codec, n = Codec(), settings.user_partitions
    missing = {r["request_id"] for r in sent} - {r["request_id"] for r in replies}
    group = Consumer(consumer_config(settings, f"{settings.topic_prefix}streams-accounts"))
    reader = Consumer({"bootstrap.servers": settings.bootstrap,
                       "group.id": f"explain-{uuid.uuid4().hex[:6]}",
                       "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    lines = [f"{len(missing)} requests without a reply, e.g. {sorted(missing)[:5]}"]
    try:
        uncommitted = set()
        for p in range(n):
            for msg in read_records(reader, settings.topic("replies"), p, 0):
                rid = codec.decode("reply", msg.value())["request_id"]
                if rid in missing:
                    uncommitted.add(rid)
        lines.append(f"{len(uncommitted)} of them have a reply a read_uncommitted reader sees")
        topic = settings.topic("requests")
        for p in range(n):
            committed = group.committed([TopicPartition(topic, p)], timeout=10)[0].offset
            where = [msg.offset() for msg in read_records(reader, topic, p, 0)
                     if codec.decode("order_request", msg.value())["request_id"] in missing]
            if where:
                lines.append(f"requests[{p}] committed at {committed}: missing at offsets "
                             f"{where[:20]}{' ...' if len(where) > 20 else ''}")
    finally:
        reader.close()
        group.close()
    return "\n".join(lines)
