"""The WebSocket side of the traders: user-data streams (where fills arrive, so
order->fill latency is measured as a client sees it), retail's public subscriptions and
the bots' subscription churn."""
from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp

from infra.loadgen.traders import Account, Floor, _sleep

ENDED = ("EXPIRED", "REJECTED", "CANCELED")


async def listen_key(floor: Floor, acct: Account) -> str:
    async with floor.http.post(f"{floor.base}/api/v3/userDataStream",
                               headers={"X-MBX-APIKEY": acct.api_key}) as resp:
        body = await resp.json(content_type=None)
    if resp.status != 200:
        raise RuntimeError(f"listen key for user {acct.user_id}: {resp.status} {body}")
    return body["listenKey"]


async def user_stream(floor: Floor, key: str, opened: asyncio.Event | None = None) -> None:
    """Read one user's executionReports: the first TRADE of an order we are timing ends
    its order->fill latency; an order that ends without one stops being timed."""
    async with floor.http.ws_connect(f"{floor.base.replace('http', 'ws', 1)}/ws/{key}",
                                     heartbeat=20) as ws:
        if opened is not None:
            opened.set()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            m = json.loads(msg.data)
            if m.get("e") != "executionReport":
                continue
            sent = floor.fills_waiting.get(m.get("c"))
            if sent is None:
                continue
            if m.get("x") == "TRADE":
                now = time.perf_counter()
                floor.fills_waiting.pop(m["c"], None)
                floor.recorder.fill(now, (now - sent) * 1000)
            elif m.get("x") in ENDED:
                floor.fills_waiting.pop(m["c"], None)


async def public_streams(floor: Floor, streams: list[str], counter: dict) -> None:
    url = f"{floor.base.replace('http', 'ws', 1)}/stream?streams={'/'.join(streams)}"
    async with floor.http.ws_connect(url, heartbeat=20) as ws:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            counter["ws_messages"] = counter.get("ws_messages", 0) + 1


async def churn(floor: Floor, rng: random.Random, counter: dict) -> None:
    """A bot's subscription churn: connect, SUBSCRIBE, read a little, UNSUBSCRIBE, close."""
    pairs = sorted(floor.markets.markets)
    url = f"{floor.base.replace('http', 'ws', 1)}/ws"
    n = 0
    while not floor.stop.is_set():
        n += 1
        stream = f"{rng.choice(pairs).lower()}@{rng.choice(('trade', 'depth', 'ticker'))}"
        try:
            async with floor.http.ws_connect(url) as ws:
                await ws.send_json({"method": "SUBSCRIBE", "params": [stream], "id": n})
                try:
                    async with asyncio.timeout(1 + 2 * rng.random()):
                        async for msg in ws:
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                break
                            counter["ws_messages"] = counter.get("ws_messages", 0) + 1
                except TimeoutError:
                    pass
                await ws.send_json({"method": "UNSUBSCRIBE", "params": [stream], "id": -n})
            counter["churned"] = counter.get("churned", 0) + 1
        except aiohttp.ClientError as exc:
            floor.recorder.request(time.perf_counter(), "error", f"websocket {type(exc).__name__}")
        await _sleep(floor.stop, 0.5 + rng.random())
