"""Conservation, non-negativity and idempotence of the pure rules under random traffic.

Requests, engine matching and settlement run in a random interleaving (Hypothesis picks
when each stage catches up), including duplicated requests and settlements. At every
step no balance is negative and the gate's hold for each live order equals settlement's;
at quiescence every asset sums to deposits - withdrawals; once every order is cancelled
nothing stays held but pending withdrawals.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.streams.sim import Exchange, place, request

USERS = (1, 2, 3)
ASSETS = ("AAA", "BBB", "QQQ")
PAIRS = ("AAAQQQ", "BBBQQQ")

deposits = st.tuples(st.just("deposit"), st.sampled_from(USERS), st.sampled_from(ASSETS),
                     st.integers(1, 50_000))
withdrawals = st.tuples(st.just("withdraw"), st.sampled_from(USERS), st.sampled_from(ASSETS),
                        st.integers(1, 20_000))
results = st.tuples(st.just("result"), st.integers(0, 50), st.booleans())
orders = st.tuples(
    st.just("place"), st.sampled_from(USERS), st.sampled_from(PAIRS), st.integers(0, 1),
    st.sampled_from([0, 0, 0, 1, 2]),            # LIMIT mostly, MARKET, LIMIT_MAKER
    st.sampled_from([0, 0, 1, 2]),               # GTC mostly, IOC, FOK
    st.one_of(st.integers(90, 110), st.integers(0, 130)), st.integers(0, 12),
    st.integers(0, 900), st.integers(0, 3))
cancels = st.tuples(st.just("cancel"), st.sampled_from(USERS), st.integers(0, 50))
amends = st.tuples(st.just("amend"), st.sampled_from(USERS), st.integers(0, 50),
                   st.integers(1, 130), st.integers(1, 12))
steps = st.tuples(st.just("step"), st.integers(1, 6), st.integers(0, 12))
dups = st.tuples(st.just("dup"), st.integers(0, 50))
# Weighted by drawing the kind first: orders dominate, as they do on an exchange.
_BY_KIND = {"place": orders, "deposit": deposits, "withdraw": withdrawals, "result": results,
            "cancel": cancels, "amend": amends, "step": steps, "dup": dups}
_KINDS = ["place"] * 8 + ["step"] * 3 + ["cancel"] * 2 + ["deposit", "withdraw", "result",
                                                          "amend", "dup"]
ops = st.lists(st.sampled_from(_KINDS).flatmap(_BY_KIND.__getitem__), min_size=40,
               max_size=200)
# Opening balances: from tight (most orders refused) to ample (most orders trade).
funding = st.lists(st.integers(0, 20_000), min_size=len(USERS) * len(ASSETS),
                   max_size=len(USERS) * len(ASSETS))


def run(ex: Exchange, script: list, opening: list[int]) -> None:
    for n, amount in enumerate(opening):
        uid, asset = USERS[n // len(ASSETS)], ASSETS[n % len(ASSETS)]
        if amount:
            scale = 30 if asset == "QQQ" else 1
            ex.send(request(f"open-{n}", uid, "Deposit", asset=asset, amount=amount * scale,
                            reference=None))
    sent: list[dict] = []
    placed: list[tuple[int, str, int]] = []          # (user, pair, order id)
    for n, op in enumerate(script):
        rid = f"r{n}"
        kind = op[0]
        if kind == "deposit":
            req = request(rid, op[1], "Deposit", asset=op[2], amount=op[3], reference=None)
        elif kind == "withdraw":
            req = request(rid, op[1], "Withdraw", asset=op[2], amount=op[3], destination=None)
        elif kind == "result":
            pending = sorted(ex.pending_withdrawals.items())
            if not pending:
                continue
            wid, w = pending[op[1] % len(pending)]
            req = request(rid, w["user_id"], "WithdrawalResult", withdrawal_request_id=wid,
                          asset=w["asset"], amount=w["amount"], completed=op[2], reference=None)
        elif kind == "place":
            _, uid, pair, side, okind, tif, price, qty, quote, stp = op
            if okind == 1 and quote:
                qty = 0                                # a market order by quote amount
            else:
                quote = 0
            req = place(rid, uid, pair, side, price, qty, kind=okind, tif=tif, quote_qty=quote,
                        stp=stp, cid=f"c{n % 7}" if n % 3 == 0 else None)
        elif kind in ("cancel", "amend"):
            if not placed:
                continue
            owner, pair, oid = placed[op[2] % len(placed)]
            body = {"pair": pair, "order_id": oid, "client_order_id": None}
            if kind == "cancel":
                req = request(rid, op[1], "CancelOrder", **body)
            else:
                req = request(rid, op[1], "AmendOrder", new_price=op[3], new_qty=op[4], **body)
        elif kind == "step":
            ex.match(op[1])
            ex.settle(op[2])
            check_live(ex)
            continue
        else:                                          # redeliver an earlier request
            if not sent:
                continue
            req = sent[op[1] % len(sent)]
        replies = ex.send(req, partition=req["user_id"] % 2)
        sent.append(req)
        if kind == "place" and replies[-1]["code"] == 0:
            placed.append((req["user_id"], req["body"][1]["pair"], replies[-1]["order_id"]))
        assert not ex.negative()


def check_live(ex: Exchange) -> None:
    """Gate and settlement agree on every live order's remaining hold."""
    assert not ex.negative()
    pending = {r[0][1] for r in ex.orders}          # placed, not yet seen by the engine
    for oid, entry in ex.accounts.open_orders().items():
        live = ex.settlement.live.get(oid)
        if live is not None and int(oid) not in pending:
            # equal once every settlement of it has been applied
            if not any(s.get("order_id") == int(oid) for s in ex.settlements):
                assert live[3] == entry[4], oid


def cancel_everything(ex: Exchange) -> None:
    for n, uid in enumerate(USERS):
        for pair in PAIRS:
            ex.send(request(f"end-{n}-{pair}", uid, "CancelAllOrders", pair=pair))
    ex.drain()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, opening=funding)
def test_conservation_under_random_traffic(script, opening):
    ex = Exchange()
    run(ex, script, opening)
    ex.drain()
    assert ex.totals() == ex.expected_totals()
    check_live(ex)
    cancel_everything(ex)
    assert ex.totals() == ex.expected_totals()
    assert not ex.accounts.open_orders()
    assert not ex.settlement.live
    held = {k.split(":")[1]: 0 for k in ex.accounts.balances()}
    for key, (_, h, _) in ex.accounts.balances().items():
        held[key.split(":")[1]] += h
    for w in ex.pending_withdrawals.values():
        held[w["asset"]] -= w["amount"]
    assert all(v == 0 for v in held.values()), held


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, opening=funding)
def test_duplicated_settlements_change_nothing(script, opening):
    once, twice = Exchange(), Exchange(duplicate_settlements=True)
    run(once, script, opening)
    run(twice, script, opening)
    once.drain()
    twice.drain()
    assert once.accounts.balances() == twice.accounts.balances()
    assert once.accounts.open_orders() == twice.accounts.open_orders()


def random_script(seed: int, n: int) -> tuple[list, list[int]]:
    """A long seeded script of the same shapes Hypothesis draws (for scale, not shrinking)."""
    import random

    rnd = random.Random(seed)
    script: list = []
    for _ in range(n):
        kind = rnd.choice(_KINDS)
        if kind == "place":
            price = rnd.randint(90, 110) if rnd.random() < 0.8 else rnd.randint(0, 130)
            script.append(("place", rnd.choice(USERS), rnd.choice(PAIRS), rnd.randint(0, 1),
                           rnd.choice([0, 0, 0, 1, 2]), rnd.choice([0, 0, 1, 2]), price,
                           rnd.randint(0, 12), rnd.randint(0, 900), rnd.randint(0, 3)))
        elif kind == "deposit":
            script.append(("deposit", rnd.choice(USERS), rnd.choice(ASSETS),
                           rnd.randint(1, 50_000)))
        elif kind == "withdraw":
            script.append(("withdraw", rnd.choice(USERS), rnd.choice(ASSETS),
                           rnd.randint(1, 20_000)))
        elif kind == "result":
            script.append(("result", rnd.randint(0, 50), rnd.random() < 0.5))
        elif kind == "cancel":
            script.append(("cancel", rnd.choice(USERS), rnd.randint(0, 10**6)))
        elif kind == "amend":
            script.append(("amend", rnd.choice(USERS), rnd.randint(0, 10**6),
                           rnd.randint(1, 130), rnd.randint(1, 12)))
        elif kind == "step":
            script.append(("step", rnd.randint(1, 6), rnd.randint(0, 12)))
        else:
            script.append(("dup", rnd.randint(0, 10**6)))
    return script, [rnd.randint(0, 20_000) for _ in range(len(USERS) * len(ASSETS))]


def test_conservation_over_a_long_seeded_run():
    script, opening = random_script(seed=5, n=25_000)
    ex = Exchange()
    run(ex, script, opening)
    ex.drain()
    trades = sum(type(e).__name__ == "Trade" for e in ex.events)
    assert trades > 1_000                     # the run really exchanges funds
    assert ex.totals() == ex.expected_totals()
    cancel_everything(ex)
    assert ex.totals() == ex.expected_totals()
    assert not ex.accounts.open_orders() and not ex.settlement.live
