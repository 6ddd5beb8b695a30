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
import re
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from urllib.parse import quote

import aiohttp

from engine.markets import MarketsConfig
from infra.loadgen.keepalive import Pool
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

    def __post_init__(self) -> None:
        # The key's HMAC state, keyed once: each signature copies it (the key schedule is
        # most of an HMAC of a short query).
        self.mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha256)

    def sign(self, text: str) -> str:
        mac = self.mac.copy()
        mac.update(text.encode())
        return mac.hexdigest()


@dataclass
class Floor:
    """What every trader shares: the HTTP session (WebSockets), the keep-alive pool
    (REST), pacing, the recorder, the budget."""
    http: aiohttp.ClientSession
    base: str
    markets: MarketsConfig
    recorder: Recorder
    stop: asyncio.Event
    max_requests: int
    max_in_flight: int = 2048
    request_timeout: float = 30.0
    recv_window: int | None = None
    multiplier: float = 1.0
    sent: int = 0
    fills_waiting: dict[str, float] = field(default_factory=dict)   # client id -> sent at
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.rest = Pool(self.base, self.request_timeout)

    def mid(self, pair: str) -> Decimal:
        return MIDS.get(self.markets.market(pair).base, Decimal("100"))


_PLAIN = re.compile(r"[A-Za-z0-9._~-]*")


def query(params: dict) -> str:
    """urlencode for the load's parameters, which are nearly always plain tokens."""
    parts = []
    for k, v in params.items():
        v = str(v)
        parts.append(f"{k}={v}" if _PLAIN.fullmatch(v) else f"{k}={quote(v, safe='')}")
    return "&".join(parts)


def signed_target(account: Account, path: str, params: dict,
                  recv_window: int | None = None) -> str:
    """path?query&signature=..., Binance-style (the signature covers the query as sent).
    recv_window: how long after its timestamp the gateway may still accept the request
    (the gateway's default, 5000 ms, when None)."""
    if recv_window is not None:
        params = {**params, "recvWindow": recv_window}
    text = query(params)
    text = f"{text}&timestamp={int(time.time() * 1000)}" if text else \
        f"timestamp={int(time.time() * 1000)}"
    return f"{path}?{text}&signature={account.sign(text)}"


def signed_url(account: Account, base: str, path: str, params: dict) -> str:
    return f"{base}{signed_target(account, path, params)}"


def body_json(body: object) -> object:
    """A REST body as JSON (bytes from the pool); what is not JSON stays as text."""
    if isinstance(body, bytes | bytearray):
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")
    return body


def send(floor: Floor, account: Account | None, method: str, path: str, *,
         order: bool = False, probing: bool = False, cancelling: bool = False,
         fill_id: str | None = None, done=None, **params) -> None:
    """One REST request, sent now and recorded when answered (done(status, body) then,
    if given). Over the request budget it is not sent and the run stops. With
    `max_in_flight` requests unanswered it is not sent either and counts as an error: a
    stack that slow has broken any latency limit long before, and a queue inside the load
    generator would only grow (and cost the cores the stack needs)."""
    if floor.sent >= floor.max_requests:
        floor.stop.set()
        if done is not None:
            done(0, None)
        return
    floor.sent += 1
    # The clock starts when the request is due: a late answer is the stack's latency.
    started = time.perf_counter()
    if order:
        floor.recorder.sent(started)
    if floor.in_flight >= floor.max_in_flight:
        floor.recorder.capped += 1
        floor.recorder.request(started, "error", f"{method} {path}: not sent, "
                               f"{floor.max_in_flight} requests unanswered", order=order)
        if done is not None:
            done(0, None)
        return
    if fill_id:
        floor.fills_waiting[fill_id] = started
    floor.in_flight += 1
    target = (signed_target(account, path, params, floor.recv_window) if account
              else f"{path}?{query(params)}")

    def answered(status: int, body: object, error: BaseException | None) -> None:
        floor.in_flight -= 1
        now = time.perf_counter()
        if error is not None:
            outcome, detail = "error", f"{method} {path}: transport {type(error).__name__}"
        elif 200 <= status < 300:
            outcome, detail = "ok", ""
        else:
            body = body_json(body)     # only a refusal is read: it carries the reason
            outcome, detail = classify(status, body, probing=probing, cancelling=cancelling)
            if outcome == "error":
                detail = f"{method} {path}: {detail}"
        if outcome != "ok" and fill_id:
            floor.fills_waiting.pop(fill_id, None)
        floor.recorder.request(now, outcome, detail, order=order,
                               ack_ms=(now - started) * 1000 if order else None)
        if done is not None:
            done(status, body)

    floor.rest.submit(method, target, account.api_key if account else None, answered)


async def call(floor: Floor, account: Account | None, method: str, path: str,
               **kwargs) -> tuple[int, object]:
    """send(), awaited: (status, body); status 0 when nothing was answered."""
    answer = asyncio.get_running_loop().create_future()

    def done(status, body):
        if not answer.done():
            answer.set_result((status, body))
    send(floor, account, method, path, done=done, **kwargs)
    return await answer


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
    return _qty_of(floor.markets.market(pair), floor.mid(pair), notional)


def _price(floor: Floor, pair: str, factor: Decimal) -> str:
    return _price_of(floor.markets.market(pair), floor.mid(pair), factor)


# A run uses a handful of (pair, factor) prices and (pair, notional) sizes: Decimal
# arithmetic once each, not once per order.
@cache
def _qty_of(m, mid: Decimal, notional: Decimal) -> str:
    q = (notional / mid).quantize(m.lot_size)
    return str(max(q, m.lot_size))


@cache
def _price_of(m, mid: Decimal, factor: Decimal) -> str:
    return str((mid * factor).quantize(m.tick_size))


async def market_maker(floor: Floor, t: Trader, acct: Account, rng: random.Random) -> None:
    """Continuous cancel-replace quoting on every pair: keeps MM_RESTING quotes a pair,
    cancelling the oldest before placing a new one."""
    pairs = sorted(floor.markets.markets)
    resting = {p: deque() for p in pairs}
    # Five levels a side, 5 bp apart around the mid.
    ladder = {"BUY": [1 - k * Decimal("0.0005") for k in range(1, 6)],
              "SELL": [1 + k * Decimal("0.0005") for k in range(1, 6)]}
    n = 0

    def act():
        nonlocal n
        n += 1
        pair = pairs[n % len(pairs)]
        book = resting[pair]
        if len(book) >= MM_RESTING:
            cid = book.popleft()
            send(floor, acct, "DELETE", "/api/v3/order", order=True,
                             cancelling=True, symbol=pair, origClientOrderId=cid)
            return
        side = rng.choice(("BUY", "SELL"))
        factor = ladder[side][rng.randint(0, 4)]
        cid = f"m{t.index}x{n}"
        book.append(cid)
        send(floor, acct, "POST", "/api/v3/order", order=True, symbol=pair,
                         side=side, type="LIMIT", timeInForce="GTC",
                         price=_price(floor, pair, factor),
                         quantity=_qty(floor, pair, QUOTE_NOTIONAL * 5),
                         newClientOrderId=cid, newOrderRespType="ACK")
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
            send(floor, acct, "POST", "/api/v3/order", order=True, fill_id=cid,
                             symbol=pair, side=side, type="MARKET", newClientOrderId=cid,
                             newOrderRespType="ACK", **size)
        else:  # a marketable limit order (IOC through the makers' ladder): fills or expires
            factor = Decimal("1.003") if side == "BUY" else Decimal("0.997")
            send(floor, acct, "POST", "/api/v3/order", order=True, symbol=pair,
                             side=side, type="LIMIT", timeInForce="IOC",
                             price=_price(floor, pair, factor), newClientOrderId=cid,
                             quantity=_qty(floor, pair, QUOTE_NOTIONAL), fill_id=cid,
                             newOrderRespType="ACK")

    def check():
        send(floor, acct, "GET", "/api/v3/account")

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
            # Told to back off by its rate limit: the burst is not sent, and the ramp's
            # check of the load generator's own pace must not read that as falling behind.
            floor.recorder.held(time.perf_counter(), burst)
            return
        pair = rng.choice(pairs)
        for _ in range(burst):
            n += 1
            side = rng.choice(("BUY", "SELL"))
            cid = f"b{t.index}x{n}"
            factor = Decimal("1.01") if side == "BUY" else Decimal("0.99")
            send(floor, acct, "POST", "/api/v3/order", order=True, probing=True,
                             fill_id=cid, symbol=pair, side=side, type="LIMIT",
                             timeInForce="IOC", price=_price(floor, pair, factor),
                             quantity=_qty(floor, pair, QUOTE_NOTIONAL), newClientOrderId=cid,
                             newOrderRespType="ACK")

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
