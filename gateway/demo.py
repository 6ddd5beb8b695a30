"""Demo traffic through the gateway: one market maker quoting a ladder around a drifting
mid price on every pair, and a few takers hitting it, so a newcomer running
`keel up --demo` sees trades, depth and tickers move within seconds.

Everything goes through the public API like any Binance client would (signed REST);
the demo users are created on first start and reused after (their secrets are opened
with the gateway's master key, which this process shares on one machine).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from decimal import Decimal
from urllib.parse import urlencode

import aiohttp
import psycopg

from engine.markets import MarketsConfig
from gateway.users import create_user
from gateway.vault import Vault
from infra.logs import event
from infra.settings import Settings

log = logging.getLogger("keel.demo")
START_PRICES = {"BTC": Decimal("30000"), "ETH": Decimal("2000"), "SOL": Decimal("20")}
TAKERS = 3


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, key: str, secret: str) -> None:
        self.http, self.base, self.key, self.secret = http, base, key, secret

    async def call(self, method: str, path: str, **params) -> tuple[int, object]:
        params["timestamp"] = int(time.time() * 1000)
        text = urlencode(params)
        sig = hmac.new(self.secret.encode(), text.encode(), hashlib.sha256).hexdigest()
        async with self.http.request(method, f"{self.base}{path}?{text}&signature={sig}",
                                     headers={"X-MBX-APIKEY": self.key}) as resp:
            return resp.status, await resp.json(content_type=None)


def demo_users(settings: Settings) -> dict[str, tuple[str, str]]:
    """name -> (api key, secret) for the demo's users, creating those that are missing."""
    vault = Vault.from_settings(settings)
    names = {"demo-ops": ("standard", True), "demo-mm": ("vip", False),
             **{f"demo-taker-{i}": ("standard", False) for i in range(TAKERS)}}
    out = {}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for name, (tier, admin) in names.items():
            row = conn.execute(
                "SELECT k.api_key, k.secret_box FROM gateway_users u JOIN gateway_api_keys k "
                "USING (user_id) WHERE u.name = %s AND k.enabled LIMIT 1", (name,)).fetchone()
            if row is None:
                user = create_user(conn, vault, name, tier, admin)
                out[name] = (user.api_key, user.secret.reveal())
            else:
                out[name] = (row[0], vault.open(row[1]).reveal())
    return out


def _fmt(value: Decimal, step: Decimal) -> str:
    return str(value.quantize(step))


async def market_maker(mm: Client, markets: MarketsConfig, stop: asyncio.Event) -> None:
    mids = {p: START_PRICES.get(m.base, Decimal("100")) for p, m in markets.markets.items()}
    rng = random.Random(7)
    while not stop.is_set():
        for pair, m in markets.markets.items():
            if stop.is_set():
                return
            mids[pair] *= Decimal(1) + Decimal(rng.uniform(-0.002, 0.002))
            await mm.call("DELETE", "/api/v3/openOrders", symbol=pair)
            for level in range(1, 6):
                spread = mids[pair] * Decimal("0.0005") * level
                qty = (Decimal(50) / mids[pair] * level).quantize(m.lot_size) + m.lot_size * 10
                for side, price in (("BUY", mids[pair] - spread), ("SELL", mids[pair] + spread)):
                    if stop.is_set():
                        return
                    await mm.call("POST", "/api/v3/order", symbol=pair, side=side, type="LIMIT",
                                  timeInForce="GTC", price=_fmt(price, m.tick_size),
                                  quantity=_fmt(qty, m.lot_size), newOrderRespType="ACK")
        await _sleep(stop, 2.0)


async def taker(client: Client, markets: MarketsConfig, seed: int, stop: asyncio.Event) -> None:
    rng = random.Random(seed)
    pairs = sorted(markets.markets)
    while not stop.is_set():
        pair = rng.choice(pairs)
        await client.call("POST", "/api/v3/order", symbol=pair, side=rng.choice(("BUY", "SELL")),
                          type="MARKET", quoteOrderQty=str(rng.randint(10, 60)),
                          newOrderRespType="ACK")
        await _sleep(stop, rng.uniform(0.3, 1.2))


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def fund(ops: Client, user_ids: dict[str, int], markets: MarketsConfig) -> None:
    for uid in user_ids.values():
        for asset in markets.assets:
            amount = "1000000" if asset == "USDT" else "1000"
            while True:
                status, body = await ops.call("POST", "/api/v3/admin/deposit", userId=uid,
                                              asset=asset, amount=amount)
                if status == 200:
                    break
                event(log, "deposit not accepted yet; retrying", logging.INFO, body=body)
                await asyncio.sleep(1.0)


async def run_demo(settings: Settings, markets: MarketsConfig, base: str,
                   stop: asyncio.Event) -> None:
    users = await asyncio.to_thread(demo_users, settings)
    async with aiohttp.ClientSession() as http:
        clients = {name: Client(http, base, *creds) for name, creds in users.items()}
        ids = {}
        for name, c in clients.items():
            if name != "demo-ops":
                status, body = await c.call("GET", "/api/v3/account")
                while status != 200:
                    await asyncio.sleep(1.0)
                    status, body = await c.call("GET", "/api/v3/account")
                ids[name] = body["uid"]
        await fund(clients["demo-ops"], ids, markets)
        event(log, "demo traders funded; trading", logging.INFO, users=len(ids))
        tasks = [asyncio.ensure_future(market_maker(clients["demo-mm"], markets, stop))]
        tasks += [asyncio.ensure_future(taker(clients[f"demo-taker-{i}"], markets, i, stop))
                  for i in range(TAKERS)]
        await asyncio.gather(*tasks)
