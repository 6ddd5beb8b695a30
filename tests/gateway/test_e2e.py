"""The whole real stack through the gateway's REST API: gateway -> keel.requests ->
accounts -> keel.orders -> engine -> keel.events/keel.depth -> gateway (and settlement ->
accounts -> keel.balances -> gateway)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from decimal import Decimal

import aiohttp

from gateway.config import GatewayConfig
from gateway.context import FOLDING
from gateway.ratelimit import Limits
from tests.gateway.stack import Trader, serve_gateway

WAIT = 90.0          # a safety net for a stuck stack, never a speed assertion


def run(coro):
    return asyncio.run(coro)


async def _traders(http, base, stack):
    u = stack.users
    return {name: Trader(http, base, u[name].api_key, u[name].secret.reveal(), u[name].user_id)
            for name in u}


async def fund(stack, t: dict, name: str, asset: str, amount: str) -> None:
    """Deposit through the admin endpoint; retried while the stack is still starting."""
    deadline = time.monotonic() + WAIT
    while True:
        stack.check()
        r = await t["ops"].signed("POST", "/api/v3/admin/deposit", body=True,
                                  userId=t[name].user_id, asset=asset, amount=amount)
        if r.status == 200:
            return
        assert r.code == -1007, r.body           # only "not answered yet" is retried
        assert time.monotonic() < deadline, stack.logs()


async def eventually(stack, probe, what, wait: float = WAIT):
    deadline = time.monotonic() + wait
    while True:
        stack.check()
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"gave up waiting for {what}\n{stack.logs()}")
        await asyncio.sleep(0.05)


def test_place_fill_cancel_and_full_fills(stack):
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            await fund(stack, t, "alice", "BTC", "2")
            await fund(stack, t, "bob", "USDT", "100000")
            # alice rests two asks; bob's FULL buy takes the first and part of the second.
            a1 = await t["alice"].signed("POST", "/api/v3/order", symbol="BTCUSDT",
                                         side="SELL", type="LIMIT", timeInForce="GTC",
                                         price="30000.00", quantity="0.1",
                                         newClientOrderId="ask-1", newOrderRespType="RESULT")
            assert a1.status == 200, a1.body
            assert (a1.body["status"], a1.body["clientOrderId"]) == ("NEW", "ask-1")
            # read-your-writes: the order is there the moment the POST returned
            got = await t["alice"].signed("GET", "/api/v3/order", symbol="BTCUSDT",
                                          origClientOrderId="ask-1")
            assert got.status == 200 and got.body["orderId"] == a1.body["orderId"]
            assert got.body["price"] == "30000.00" and got.body["origQty"] == "0.10000"
            a2 = await t["alice"].signed("POST", "/api/v3/order", symbol="BTCUSDT",
                                         side="SELL", type="LIMIT", timeInForce="GTC",
                                         price="30001.00", quantity="0.2",
                                         newOrderRespType="ACK")
            assert a2.status == 200 and set(a2.body) >= {"orderId", "transactTime"}
            b = await t["bob"].signed("POST", "/api/v3/order", symbol="BTCUSDT", side="BUY",
                                      type="LIMIT", timeInForce="IOC", price="30001.00",
                                      quantity="0.15", newOrderRespType="FULL")
            assert b.status == 200, b.body
            assert b.body["status"] == "FILLED" and b.body["executedQty"] == "0.15000"
            fills = [(f["price"], f["qty"]) for f in b.body["fills"]]
            assert fills == [("30000.00", "0.10000"), ("30001.00", "0.05000")]
            assert b.body["cummulativeQuoteQty"] == "4500.0500000"
            assert all(f["commissionAsset"] == "USDT" for f in b.body["fills"])
            # alice's first ask is FILLED, the second PARTIALLY_FILLED and open
            q1 = await t["alice"].signed("GET", "/api/v3/order", symbol="BTCUSDT",
                                         orderId=a1.body["orderId"])
            assert q1.body["status"] == "FILLED"
            opens = await t["alice"].signed("GET", "/api/v3/openOrders", symbol="BTCUSDT")
            assert [(o["orderId"], o["status"]) for o in opens.body] == [
                (a2.body["orderId"], "PARTIALLY_FILLED")]
            mine = await t["bob"].signed("GET", "/api/v3/myTrades", symbol="BTCUSDT")
            assert [(x["price"], x["isBuyer"], x["isMaker"]) for x in mine.body] == [
                ("30000.00", True, False), ("30001.00", True, False)]
            # depth shows the rest of a2
            depth = await t["bob"].public("/api/v3/depth", symbol="BTCUSDT")
            assert ["30001.00", "0.15000"] in depth.body["asks"]
            # cancel the rest
            c = await t["alice"].signed("DELETE", "/api/v3/order", symbol="BTCUSDT",
                                        orderId=a2.body["orderId"])
            assert c.status == 200 and c.body["status"] == "CANCELED", c.body
            again = await t["alice"].signed("DELETE", "/api/v3/order", symbol="BTCUSDT",
                                            orderId=a2.body["orderId"])
            assert (again.status, again.code) == (400, -2011)
    run(main())


def test_balances_follow_settlement(stack):
    """keel.balances (accounts, after settlement applies the engine's trades) reaches the
    account endpoint: a buyer ends with the base asset, the hold gone."""
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            await fund(stack, t, "alice", "SOL", "10")
            await fund(stack, t, "bob", "USDT", "1000")
            ask = await t["alice"].signed("POST", "/api/v3/order", symbol="SOLUSDT",
                                          side="SELL", type="LIMIT", timeInForce="GTC",
                                          price="25.00", quantity="2")
            assert ask.status == 200, ask.body
            bid = await t["bob"].signed("POST", "/api/v3/order", symbol="SOLUSDT", side="BUY",
                                        type="LIMIT", timeInForce="IOC", price="25.00",
                                        quantity="2")
            assert bid.status == 200 and bid.body["status"] == "FILLED", bid.body
            # watched in-process: /account weighs 20 and polling it would trip the limit
            folding = app[FOLDING]
            bob = t["bob"].user_id

            async def settled():
                have = folding.orders.balances.get(bob, {})
                return have.get("SOL", (0,))[0] >= 2 * 10**8
            # settlement (Faust) has been seen to lag by a minute on a loaded machine
            await eventually(stack, settled, lambda: "bob's SOL after settlement; have "
                             f"{folding.orders.balances.get(bob)}", wait=240)
            acct = (await t["bob"].signed("GET", "/api/v3/account")).body
            assert acct["uid"] == bob
            sol = [b for b in acct["balances"] if b["asset"] == "SOL"][0]
            assert Decimal(sol["free"]) >= 2 and sol["locked"] == "0.00000000"
    run(main())


def test_error_codes_and_user_isolation(stack):
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            alice, bob = t["alice"], t["bob"]
            await fund(stack, t, "alice", "USDT", "1000")
            order = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT",
                     "timeInForce": "GTC", "price": "100.00", "quantity": "1"}
            cases = [
                ("bad signature", dict(secret="x" * 64), 400, -1022),
                ("unknown key", dict(api_key="A" * 64), 401, -2015),
                ("malformed key", dict(api_key="nope"), 401, -2014),
                ("clock skew", dict(ts=int(time.time() * 1000) - 600_000), 400, -1021),
                ("unknown symbol", dict(symbol="DOGEUSDT"), 400, -1121),
                ("tick", dict(price="100.001"), 400, -1013),
                ("lot", dict(quantity="0.00001"), 400, -1013),
                ("notional", dict(price="0.01", quantity="1"), 400, -1013),
                ("missing", dict(timeInForce=None), 400, -1102),
                ("illegal", dict(quantity="1e3"), 400, -1100),
                ("bad side", dict(side="HOLD"), 400, -1117),
                ("insufficient", dict(quantity="100"), 400, -2010),
            ]
            for name, change, status, code in cases:
                params = {**order, **change}
                r = await alice.signed("POST", "/api/v3/order", **params)
                assert (r.status, r.code) == (status, code), (name, r.body)
            r = await alice.signed("POST", "/api/v3/order", **{**order, "quantity": "100"})
            assert r.body["msg"] == "Account has insufficient balance for requested action."
            # alice's resting order is invisible and untouchable for bob
            mine = await alice.signed("POST", "/api/v3/order", **order)
            assert mine.status == 200 and mine.body["status"] == "NEW", mine.body
            oid = mine.body["orderId"]
            peek = await bob.signed("GET", "/api/v3/order", symbol="ETHUSDT", orderId=oid)
            assert (peek.status, peek.code) == (400, -2013)
            kill = await bob.signed("DELETE", "/api/v3/order", symbol="ETHUSDT", orderId=oid)
            assert (kill.status, kill.code) == (400, -2011)
            bob_open = await bob.signed("GET", "/api/v3/openOrders", symbol="ETHUSDT")
            assert bob_open.status == 200 and oid not in [o["orderId"] for o in bob_open.body]
            still = await alice.signed("GET", "/api/v3/order", symbol="ETHUSDT", orderId=oid)
            assert still.body["status"] == "NEW"
            # a non-admin key cannot fund anyone
            dep = await bob.signed("POST", "/api/v3/admin/deposit", userId=bob.user_id,
                                   asset="USDT", amount="1")
            assert (dep.status, dep.code) == (401, -2015)
            # cancel everything alice has on ETHUSDT
            gone = await alice.signed("DELETE", "/api/v3/openOrders", symbol="ETHUSDT")
            assert gone.status == 200 and [o["status"] for o in gone.body] == ["CANCELED"]
            unknown = await alice.signed("GET", "/api/v3/order", symbol="ETHUSDT",
                                         orderId=10**12)
            assert (unknown.status, unknown.code) == (400, -2013)
    run(main())


def test_rate_limit_answers_429_with_retry_after(stack):
    async def main():
        config = GatewayConfig(limits=Limits(per_ip=30))
        async with serve_gateway(stack.settings, stack.markets, config) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            weights = []
            for _ in range(30):
                r = await t["alice"].public("/api/v3/ping")
                assert r.status == 200
                weights.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
            assert weights == list(range(1, 31))
            r = await t["alice"].public("/api/v3/ping")
            assert (r.status, r.code) == (429, -1003)
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            heavy = await t["alice"].public("/api/v3/depth", symbol="BTCUSDT")
            assert heavy.status == 429
    run(main())


def test_order_types_fok_maker_market_and_amend(stack):
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            mm, bob = t["mm"], t["bob"]
            await fund(stack, t, "mm", "SOL", "100")
            await fund(stack, t, "bob", "USDT", "10000")
            ask = await mm.signed("POST", "/api/v3/order", symbol="SOLUSDT", side="SELL",
                                  type="LIMIT_MAKER", price="20.00", quantity="10")
            assert ask.status == 200 and ask.body["status"] == "NEW", ask.body
            cross = await mm.signed("POST", "/api/v3/order", symbol="SOLUSDT", side="BUY",
                                    type="LIMIT_MAKER", price="20.00", quantity="1")
            assert cross.code == -2010 or cross.status == 400, cross.body
            fok = await bob.signed("POST", "/api/v3/order", symbol="SOLUSDT", side="BUY",
                                   type="LIMIT", timeInForce="FOK", price="20.00",
                                   quantity="11")
            assert fok.status == 200 and fok.body["status"] == "EXPIRED", fok.body
            mkt = await bob.signed("POST", "/api/v3/order", symbol="SOLUSDT", side="BUY",
                                   type="MARKET", quoteOrderQty="50")
            assert mkt.status == 200 and mkt.body["status"] == "FILLED", mkt.body
            assert mkt.body["executedQty"] == "2.500"
            amend = await mm.signed("PUT", "/api/v3/order/amend/keepPriority",
                                    symbol="SOLUSDT", orderId=ask.body["orderId"], newQty="5")
            assert amend.status == 200, amend.body
            assert amend.body["amendedOrder"]["origQty"] == "5.000"
            depth = await bob.public("/api/v3/depth", symbol="SOLUSDT")
            assert depth.body["asks"][0] == ["20.00", "2.500"]
    run(main())


def test_timeout_answers_minus_1007_and_the_order_can_be_queried_later(stack):
    from infra import topics
    from infra.kafka import admin_client
    from tests.gateway.conftest import spawn, stop

    # Same users and database, but topics of its own where accounts is not running yet.
    settings = stack.settings.with_(topic_prefix=f"x{uuid.uuid4().hex[:8]}.")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, stack.markets))
    assert all(o.ok for o in outcomes)
    procs = []

    async def main():
        config = GatewayConfig(order_timeout_s=0.5)
        async with serve_gateway(settings, stack.markets, config) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            dep = await t["ops"].signed("POST", "/api/v3/admin/deposit",
                                        userId=t["bob"].user_id, asset="USDT", amount="100")
            assert (dep.status, dep.code) == (503, -1007)
            r = await t["bob"].signed("POST", "/api/v3/order", symbol="ETHUSDT", side="BUY",
                                      type="LIMIT", timeInForce="GTC", price="10.00",
                                      quantity="1", newClientOrderId="late-1")
            assert (r.status, r.code) == (503, -1007)
            assert "unknown" in r.body["msg"]
            procs.append(spawn(settings, stack.log_dir, "late-engine", "engine",
                               "--metrics-port", "0"))
            procs.append(spawn(settings, stack.log_dir, "late-accounts", "streams", "accounts",
                               "--metrics-port", "0"))

            async def fate():
                q = await t["bob"].signed("GET", "/api/v3/order", symbol="ETHUSDT",
                                          origClientOrderId="late-1")
                return q.status == 200 and q.body["status"] == "NEW" and q.body
            order = await eventually(stack, fate, "the timed-out order to show up")
            assert order["price"] == "10.00" and order["clientOrderId"] == "late-1"
    try:
        run(main())
    finally:
        for proc in procs:
            stop(proc)


def test_admin_withdraw_holds_and_a_failed_result_releases(stack):
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            carol = t["mm"]
            await fund(stack, t, "mm", "ETH", "3")
            folding = app[FOLDING]

            def eth_held():
                return folding.orders.balances.get(carol.user_id, {}).get("ETH", (0, 0))[1]
            w = await t["ops"].signed("POST", "/api/v3/admin/withdraw", userId=carol.user_id,
                                      asset="ETH", amount="1", destination="0xabc")
            assert w.status == 200, w.body
            too_much = await t["ops"].signed("POST", "/api/v3/admin/withdraw",
                                             userId=carol.user_id, asset="ETH",
                                             amount="1000")
            assert (too_much.status, too_much.code) == (400, -2010)
            async def holding():
                return eth_held() == 10**8
            await eventually(stack, holding, "the withdrawal hold")
            r = await t["ops"].signed("POST", "/api/v3/admin/withdrawalResult",
                                      userId=carol.user_id, withdrawalId=w.body["id"],
                                      asset="ETH", amount="1", completed="false")
            assert r.status == 200 and r.body["status"] == "FAILED", r.body
            again = await t["ops"].signed("POST", "/api/v3/admin/withdrawalResult",
                                          userId=carol.user_id, withdrawalId=w.body["id"],
                                          asset="ETH", amount="1", completed="false")
            assert (again.status, again.code) == (400, -1100), "a result applies once"
            async def released():
                return eth_held() == 0
            await eventually(stack, released, "the hold released")
    run(main())


def test_two_gateway_instances_share_orders_and_listen_keys(stack):
    """Gateways are stateless: an order placed through one is queryable (by its client
    order id too) and cancellable through another, and a listen key from one opens a
    user-data stream on the other."""
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app_a, base_a), \
                serve_gateway(stack.settings, stack.markets) as (app_b, base_b), \
                aiohttp.ClientSession() as http:
            t_a = await _traders(http, base_a, stack)
            t_b = await _traders(http, base_b, stack)
            await fund(stack, t_a, "alice", "USDT", "100")
            async with http.post(f"{base_a}/api/v3/userDataStream",
                                 headers={"X-MBX-APIKEY": t_a["alice"].api_key}) as resp:
                key = (await resp.json())["listenKey"]
            async with http.ws_connect(f"{base_b}/ws/{key}") as ws:
                cid = f"two-{uuid.uuid4().hex[:8]}"
                placed = await t_a["alice"].signed(
                    "POST", "/api/v3/order", symbol="ETHUSDT", side="BUY", type="LIMIT",
                    timeInForce="GTC", price="11.00", quantity="1", newClientOrderId=cid)
                assert placed.status == 200, placed.body

                async def seen_on_b():
                    r = await t_b["alice"].signed("GET", "/api/v3/order", symbol="ETHUSDT",
                                                  origClientOrderId=cid)
                    return r.status == 200 and r.body
                got = await eventually(stack, seen_on_b, "the order on the other instance")
                assert got["orderId"] == placed.body["orderId"] and got["status"] == "NEW"
                gone = await t_b["alice"].signed("DELETE", "/api/v3/order", symbol="ETHUSDT",
                                                 origClientOrderId=cid)
                assert gone.status == 200 and gone.body["status"] == "CANCELED", gone.body
                statuses = []
                while "CANCELED" not in statuses:
                    msg = json.loads((await ws.receive(timeout=60)).data)
                    if msg["e"] == "executionReport" and msg["c"] == cid:
                        statuses.append(msg["X"])
                assert statuses[0] == "NEW"
    run(main())


def test_an_account_at_the_open_order_cap_gets_the_binance_filter_failure(stack):
    from tests.gateway.conftest import make_users

    cap = stack.markets.max_open_orders
    new = make_users(stack.settings, {f"capped-{uuid.uuid4().hex[:6]}": {"tier": "vip"}})
    [name] = new
    stack.users.update(new)

    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            info = await t[name].public("/api/v3/exchangeInfo")
            assert info.body["exchangeFilters"] == [
                {"filterType": "EXCHANGE_MAX_NUM_ORDERS", "maxNumOrders": cap}]
            await fund(stack, t, name, "USDT", "1000000")
            order = {"symbol": "SOLUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                     "price": "1.00", "quantity": "10", "newOrderRespType": "ACK"}

            async def place(n: int):
                return await t[name].signed("POST", "/api/v3/order", **order,
                                            newClientOrderId=f"cap-{n}")

            placed = []
            for start in range(0, cap, 50):
                placed += await asyncio.gather(*(place(n)
                                                 for n in range(start, min(cap, start + 50))))
            assert [r.status for r in placed] == [200] * cap, \
                [r.body for r in placed if r.status != 200][:3]
            over = await place(cap)
            assert (over.status, over.code) == (400, -2010), over.body
            assert over.body["msg"] == "Filter failure: EXCHANGE_MAX_NUM_ORDERS"
            # it was never placed: the gateway does not know it
            gone = await t[name].signed("GET", "/api/v3/order", symbol="SOLUSDT",
                                        origClientOrderId=f"cap-{cap}")
            assert gone.code == -2013, gone.body
            # a cancelled order frees its slot once settlement has released it
            first = placed[0].body["orderId"]
            kill = await t[name].signed("DELETE", "/api/v3/order", symbol="SOLUSDT",
                                        orderId=first)
            assert kill.status == 200, kill.body

            async def again():
                r = await t[name].signed("POST", "/api/v3/order", **order)
                assert r.status == 200 or r.code == -2010, r.body
                return r.status == 200
            await eventually(stack, again, "a slot freed by the cancel")
            done = await t[name].signed("DELETE", "/api/v3/openOrders", symbol="SOLUSDT")
            assert done.status == 200 and len(done.body) == cap, len(done.body)
    run(main())
