"""accounts as a real `keel streams accounts` worker on the embedded broker."""
from __future__ import annotations

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
