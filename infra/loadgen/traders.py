"""The traders' behaviour over the real gateway (signed REST + WebSocket), one coroutine
per trader, paced open-loop: a request is sent when its time comes, whether or not the
previous one was answered (a slow exchange must show as latency and backlog, not as a
politely slower load generator). In-flight requests are capped so the load generator
itself stays bounded."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode

import aiohttp

from engine.markets import MarketsConfig
from infra.loadgen.population import Trader
from infra.loadgen.record import Recorder, classify

MIDS = {"BTC": Decimal("30000"), "ETH": Decimal("2000"), "SOL": Decimal("20")}
QUOTE_NOTIONAL = Decimal("20")        # a quote or a retail order is worth ~20 USDT
MM_RESTING = 4                        # quotes a market maker keeps per pair before replacing


@dataclass
class Account:
    user_id: int
    api_key: str
    secret: str
    tier: str = "standard"


@dataclass
class Floor:
    """What every trader shares: the HTTP session, pacing, the recorder, the budget."""
    http: aiohttp.ClientSession
    base: str
    markets: MarketsConfig
    recorder: Recorder
    stop: asyncio.Event
    max_requests: int
    max_in_flight: int = 512
    multiplier: float = 1.0
    sent: int = 0
    fills_waiting: dict[str, float] = field(default_factory=dict)   # client id -> sent at
    tasks: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.max_in_flight)

    def mid(self, pair: str) -> Decimal:
        return MIDS.get(self.markets.market(pair).base, Decimal("100"))

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def signed_url(account: Account, base: str, path: str, params: dict) -> str:
    params = {**params, "timestamp": int(time.time() * 1000)}
    text = urlencode(params)
    sig = hmac.new(account.secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return f"{base}{path}?{text}&signature={sig}"


async def call(floor: Floor, account: Account | None, method: str, path: str, *,
               order: bool = False, probing: bool = False, cancelling: bool = False,
               fill_id: str | None = None, **params) -> tuple[int, object]:
    """One REST request, recorded. Over the request budget it is not sent and the run
    stops."""
    if floor.sent >= floor.max_requests:
        floor.stop.set()
        return 0, None
    floor.sent += 1
    async with floor.slots:
        url = (signed_url(account, floor.base, path, params) if account
               else f"{floor.base}{path}?{urlencode(params)}")
        headers = {"X-MBX-APIKEY": account.api_key} if account else {}
        started = time.perf_counter()
        if fill_id:
            floor.fills_waiting[fill_id] = started
        try:
            async with floor.http.request(method, url, headers=headers) as resp:
                status, body = resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            status, body = 0, type(exc).__name__
        now = time.perf_counter()
    outcome, detail = ((("error", f"transport {body}")) if status == 0
                       else classify(status, body, probing=probing, cancelling=cancelling))
    if outcome == "error":
        detail = f"{method} {path}: {detail}"
    if outcome != "ok" and fill_id:
        floor.fills_waiting.pop(fill_id, None)
    floor.recorder.request(now, outcome, detail, order=order,
                           ack_ms=(now - started) * 1000 if order else None)
    return status, body


async def paced(floor: Floor, rate: float, act, rng: random.Random, poisson: bool) -> None:
    """Call act() `rate * multiplier` times a second until stopped: evenly spaced for
    machines (market makers), exponential gaps for people (retail)."""
    next_at = time.perf_counter() + rng.random() / max(rate, 1e-9)
    while not floor.stop.is_set():
        now = time.perf_counter()
        if next_at > now:
            await asyncio.sleep(next_at - now)
            continue
        act()
        current = rate * floor.multiplier
        gap = rng.expovariate(current) if poisson else 1.0 / current
        next_at = max(next_at + gap, now - 1.0)     # never fire a backlog of more than 1 s


def _qty(floor: Floor, pair: str, notional: Decimal) -> str:
    m = floor.markets.market(pair)
    q = (notional / floor.mid(pair)).quantize(m.lot_size)
    return str(max(q, m.lot_size))


def _price(floor: Floor, pair: str, factor: Decimal) -> str:
    m = floor.markets.market(pair)
    return str((floor.mid(pair) * factor).quantize(m.tick_size))


async def market_maker(floor: Floor, t: Trader, acct: Account, rng: random.Random) -> None:
    """Continuous cancel-replace quoting on every pair: keeps MM_RESTING quotes a pair,
    cancelling the oldest before placing a new one."""
    pairs = sorted(floor.markets.markets)
    resting = {p: deque() for p in pairs}
    n = 0

    def act():
        nonlocal n
        n += 1
        pair = pairs[n % len(pairs)]
        book = resting[pair]
        if len(book) >= MM_RESTING:
            cid = book.popleft()
            floor.spawn(call(floor, acct, "DELETE", "/api/v3/order", order=True,
                             cancelling=True, symbol=pair, origClientOrderId=cid))
            return
        side = rng.choice(("BUY", "SELL"))
        level = Decimal(rng.randint(1, 5)) * Decimal("0.0005")
        factor = 1 - level if side == "BUY" else 1 + level
        cid = f"m{t.index}x{n}"
        book.append(cid)
        floor.spawn(call(floor, acct, "POST", "/api/v3/order", order=True, symbol=pair,
                         side=side, type="LIMIT", timeInForce="GTC",
                         price=_price(floor, pair, factor),
                         quantity=_qty(floor, pair, QUOTE_NOTIONAL * 5),
                         newClientOrderId=cid, newOrderRespType="ACK"))
    await paced(floor, t.orders_per_s, act, rng, poisson=False)


async def retail(floor: Floor, t: Trader, acct: Account, rng: random.Random) -> None:
    """Sporadic market orders (measured to the fill) and limit orders, and balance checks."""
    pairs = sorted(floor.markets.markets)
    n = 0

    def act():
        nonlocal n
        n += 1
        pair, side = rng.choice(pairs), rng.choice(("BUY", "SELL"))
        cid = f"r{t.index}x{n}"
        if rng.random() < 0.7:
            size = ({"quoteOrderQty": str(QUOTE_NOTIONAL)} if side == "BUY"
                    else {"quantity": _qty(floor, pair, QUOTE_NOTIONAL)})
            floor.spawn(call(floor, acct, "POST", "/api/v3/order", order=True, fill_id=cid,
                             symbol=pair, side=side, type="MARKET", newClientOrderId=cid,
                             newOrderRespType="ACK", **size))
        else:  # a marketable limit order (IOC through the makers' ladder): fills or expires
            factor = Decimal("1.003") if side == "BUY" else Decimal("0.997")
            floor.spawn(call(floor, acct, "POST", "/api/v3/order", order=True, symbol=pair,
                             side=side, type="LIMIT", timeInForce="IOC",
                             price=_price(floor, pair, factor), newClientOrderId=cid,
                             quantity=_qty(floor, pair, QUOTE_NOTIONAL), fill_id=cid,
                             newOrderRespType="ACK"))

    def check():
        floor.spawn(call(floor, acct, "GET", "/api/v3/account"))

    await asyncio.gather(paced(floor, t.orders_per_s, act, rng, poisson=True),
                         paced(floor, t.balance_checks_per_s, check, rng, poisson=True))


async def bot(floor: Floor, t: Trader, acct: Account, rng: random.Random,
              probe_every_s: float = 10.0, probe_burst: int = 20) -> None:
    """Bursts of IOC orders crossing the spread; every `probe_every_s` a burst of
    weighty queries that probes its API key's rate limit (429s expected, Retry-After obeyed)."""
    pairs = sorted(floor.markets.markets)
    burst = 5
    n = 0
    backoff_until = 0.0

    def act():
        nonlocal n
        if time.perf_counter() < backoff_until:
            return
        pair = rng.choice(pairs)
        for _ in range(burst):
            n += 1
            side = rng.choice(("BUY", "SELL"))
            cid = f"b{t.index}x{n}"
            factor = Decimal("1.01") if side == "BUY" else Decimal("0.99")
            floor.spawn(call(floor, acct, "POST", "/api/v3/order", order=True, probing=True,
                             fill_id=cid, symbol=pair, side=side, type="LIMIT",
                             timeInForce="IOC", price=_price(floor, pair, factor),
                             quantity=_qty(floor, pair, QUOTE_NOTIONAL), newClientOrderId=cid,
                             newOrderRespType="ACK"))

    async def probe():
        nonlocal backoff_until
        while not floor.stop.is_set():
            await _sleep(floor.stop, probe_every_s * (0.5 + rng.random()))
            for _ in range(probe_burst):
                status, _ = await call(floor, acct, "GET", "/api/v3/openOrders", probing=True,
                                       symbol=rng.choice(pairs))
                if status == 429:
                    backoff_until = time.perf_counter() + 5.0
                    break

    await asyncio.gather(paced(floor, t.orders_per_s / burst, act, rng, poisson=True),
                         probe())


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
