"""accounts -> engine -> settlement -> accounts, every stage a real process on the broker."""
from __future__ import annotations

from engine.domain import Accepted, Cancelled
from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS
from streams.holds import hold_for
from streams.units import Units
from tests.streams.sim import place, request

UNITS = Units.from_markets(load_markets(DEFAULT_MARKETS))
PAIRS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
ORDERS = {"BTCUSDT": (6_500_000, 10), "ETHUSDT": (350_000, 20), "SOLUSDT": (15_000, 45)}


def start_pipeline(workers) -> None:
    workers.start_engine()
    workers.start("accounts")
    workers.start("settlement")


def latest(balances: list[dict]) -> dict[tuple[int, str], dict]:
    out: dict[tuple[int, str], dict] = {}
    for b in balances:
        key = (b["user_id"], b["asset"])
        if key not in out or b["version"] > out[key]["version"]:
            out[key] = b
    return out


def test_no_overspend_through_the_engine_and_the_hold_comes_back(workers, client):
    start_pipeline(workers)
    holds = {p: hold_for(UNITS.pairs[p], 0, 0, *ORDERS[p], 0)[1] for p in PAIRS}
    funded = max(holds.values())
    uid = 7
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
    [ok] = [r for r in replies if r["code"] == 0 and r["request_id"] != "fund"]
    events = client.read("events", codec.decode_event,
                         lambda got: any(isinstance(e, Accepted) for e in got))
    assert [e.order_id for e in events if isinstance(e, Accepted)] == [ok["order_id"]]
    # cancel it: Cancelled -> settlement RELEASE -> accounts returns the hold
    client.send_request(request("c", uid, "CancelOrder", pair=ok["pair"],
                                order_id=ok["order_id"], client_order_id=None))
    client.flush()
    client.read("events", codec.decode_event,
                lambda got: any(isinstance(e, Cancelled) for e in got))
    balances = client.read("balances", lambda v: codec.decode("balance", v),
                           lambda got: len(got) >= 3
                           and latest(got)[(uid, "USDT")]["held"] == 0)
    final = latest(balances)[(uid, "USDT")]
    assert (final["available"], final["held"]) == (funded, 0)
    assert min(b["available"] for b in balances) == funded - holds[ok["pair"]]
