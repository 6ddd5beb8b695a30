"""A load run from start to report: users created (PostgreSQL, as `keel users create`
does) and funded through the admin API, traders started, the phases of the mode played
while the stack's own metrics are sampled, then a verdict per mode."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import time
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlsplit

import aiohttp

from engine.markets import MarketsConfig
from infra.loadgen import sockets, traders
from infra.loadgen.keepalive import HttpError
from infra.loadgen.population import Phase, Trader, phases, population
from infra.loadgen.record import Recorder
from infra.loadgen.stack import StackSampler
from infra.loadgen.stages import StageClock
from infra.loadgen.verdict import Limits, step_broken, verdict
from infra.settings import Settings

FUNDS = {"USDT": "1000000000"}        # per user; every base asset gets BASE_FUNDS
BASE_FUNDS = "1000000"


@dataclass
class Config:
    mode: str
    base_url: str
    users: int = 40
    rate: float = 100.0               # orders/s at multiplier 1
    seconds: float = 30.0
    step_seconds: float = 10.0
    max_requests: int = 1_000_000
    seed: int = 1
    limits: Limits = field(default_factory=Limits)
    allowed_hosts: tuple[str, ...] = ()
    progress: bool = True
    request_timeout: float = 30.0     # seconds; keep above the gateway's order timeout
    recv_window: int | None = None    # ms; the gateway's default (5000) when None


def check_host(url: str, allowed: tuple[str, ...]) -> None:
    """Only loopback, or a host the operator named: a load generator aimed at someone
    else's exchange is an attack."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host in allowed:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{host!r} is not loopback; allow it with --allow-host {host}")


def create_accounts(settings: Settings, plan: list[Trader], tag: str) -> tuple:
    """(admin, {(kind, index): Account}) created in the gateway's user table."""
    import psycopg

    from gateway.users import create_user
    from gateway.vault import Vault

    vault = Vault.from_settings(settings)
    out = {}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        a = create_user(conn, vault, f"loadgen-{tag}-ops", "standard", True)
        admin = traders.Account(a.user_id, a.api_key, a.secret.reveal())
        for t in plan:
            tier = "vip" if t.kind == "mm" else "standard"
            u = create_user(conn, vault, f"loadgen-{tag}-{t.kind}-{t.index}", tier)
            out[(t.kind, t.index)] = traders.Account(u.user_id, u.api_key, u.secret.reveal(),
                                                     tier)
    return admin, out


def _with_retry(fn, *args, timeout: float = 60.0):
    """PostgreSQL may still be starting when a run is launched right after `keel up`.
    Still unreachable after `timeout`: a RuntimeError saying so in one line (the command
    prints it), not psycopg's traceback."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise RuntimeError(f"the gateway's PostgreSQL (its user table) is not "
                                   f"reachable: {first}") from None
            time.sleep(1.0)


def gateway_answers(base_url: str, timeout: float = 2.0) -> bool:
    """Something accepts connections at the gateway's host and port."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout):
            return True
    except OSError:
        return False


async def until_ok(floor: traders.Floor, acct: traders.Account, method: str, path: str,
                   params: dict, deadline: float, what: str) -> None:
    """One signed request, retried every 0.5 s until it answers 2xx: the stack may still
    be starting when a run is launched right after `keel up`."""
    body: object = ""
    while True:
        with contextlib.suppress(HttpError, OSError, TimeoutError):
            status, body = await floor.rest.request(
                method, traders.signed_target(acct, path, params, floor.recv_window),
                acct.api_key)
            if 200 <= status < 300:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} refused: {traders.body_json(body)}")
        await asyncio.sleep(0.5)


async def fund(floor: traders.Floor, admin: traders.Account, accounts, markets: MarketsConfig,
               timeout: float = 120.0) -> None:
    """Deposit through the admin API; retried while accounts is still starting."""
    deadline = time.monotonic() + timeout
    sem = asyncio.Semaphore(16)

    async def one(acct, asset, amount):
        async with sem:
            await until_ok(floor, admin, "POST", "/api/v3/admin/deposit",
                           {"userId": acct.user_id, "asset": asset, "amount": amount},
                           deadline, f"deposit for user {acct.user_id}")
    jobs = [one(a, asset, FUNDS.get(asset, BASE_FUNDS))
            for a in accounts.values() for asset in markets.assets]
    await asyncio.gather(*jobs)


async def warm_up(floor: traders.Floor, plan: list[Trader], accounts,
                  timeout: float = 120.0) -> None:
    """Before the clock starts: each market maker rests one quote a side on every pair,
    retried until the whole path (gateway, accounts, engine) answers. Takers then meet a
    book, and a stack still settling is not measured as a slow one."""
    deadline = time.monotonic() + timeout
    for t in plan:
        if t.kind != "mm":
            continue
        for pair in sorted(floor.markets.markets):
            for side, factor in (("BUY", "0.999"), ("SELL", "1.001")):
                await until_ok(floor, accounts[("mm", t.index)], "POST", "/api/v3/order", {
                    "symbol": pair, "side": side, "type": "LIMIT", "timeInForce": "GTC",
                    "price": traders._price(floor, pair, Decimal(factor)),
                    "quantity": traders._qty(floor, pair, traders.QUOTE_NOTIONAL * 50),
                    "newOrderRespType": "ACK"}, deadline, "the order path")


async def run_load(cfg: Config, settings: Settings, markets: MarketsConfig,
                   state: dict | None) -> tuple[dict, Recorder]:
    from infra.commands.top import metrics_endpoints

    check_host(cfg.base_url, cfg.allowed_hosts)
    if state is None and not await asyncio.to_thread(gateway_answers, cfg.base_url):
        # No `keel up` on this data dir (that one is waited for: it may be starting) and
        # nothing listening: say so now instead of retrying the user table for a minute.
        raise RuntimeError(f"no gateway answers at {cfg.base_url} and no `keel up` runs on "
                           "this data dir: start the stack first (or pass --url)")
    rng = random.Random(cfg.seed)
    plan = population(cfg.users, cfg.rate)
    shape = phases(cfg.mode, cfg.seconds, cfg.step_seconds)
    tag = f"{int(time.time())}{rng.randrange(1000):03d}"
    admin, accounts = await asyncio.to_thread(_with_retry, create_accounts, settings, plan, tag)
    endpoints = metrics_endpoints(state) if state else {}
    counter: dict = {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        recorder = Recorder(time.perf_counter())
        floor = traders.Floor(http, cfg.base_url.rstrip("/"), markets, recorder,
                              asyncio.Event(), cfg.max_requests,
                              request_timeout=cfg.request_timeout,
                              recv_window=cfg.recv_window)
        setup_started = time.monotonic()
        await fund(floor, admin, accounts, markets)
        await warm_up(floor, plan, accounts)
        background = await _open_sockets(floor, plan, accounts, rng, counter)
        groups = clock = None
        bootstrap = ((state or {}).get("endpoints") or {}).get("kafka")
        if bootstrap:
            from infra.loadgen.lag import GroupLag
            groups = GroupLag(bootstrap)
            clock = StageClock(bootstrap, settings.topic_prefix)
            clock.start()
        sampler = StackSampler(state, endpoints, groups)
        setup_s = time.monotonic() - setup_started
        recorder.started = time.perf_counter()
        if clock is not None:
            clock.begin(time.time())
        cpu_started = time.process_time()
        workers = [asyncio.ensure_future(_trade(floor, t, accounts[(t.kind, t.index)],
                                                random.Random(rng.random())))
                   for t in plan]
        try:
            played, broke = await _play(cfg, floor, shape, sampler)
        finally:
            floor.stop.set()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Answers still on their way belong to the run, and so do the fills (or ends)
            # of the orders answered: the user streams stay open until they arrive.
            deadline = time.monotonic() + cfg.request_timeout
            while ((floor.in_flight > 0 or floor.fills_waiting)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            cpu_s = time.process_time() - cpu_started
            if clock is not None:
                clock.stop()
            if groups is not None:
                groups.close()
            await _cancel_quotes(floor, plan, accounts)
            floor.rest.close()
    result = verdict(cfg, recorder, played, broke, setup_s, counter, floor.sent, clock)
    # The load generator shares the machine's cores with the stack: say what it took, in
    # all and per request sent. Watching the stack (metrics sampler, stage clock) runs in
    # threads of this process; their CPU is said apart from the cost of making the load.
    observer_s = sampler.cpu_s + (clock.cpu_s if clock else 0.0)
    result["loadgen_cpu_s"] = round(cpu_s, 2)
    result["observer_cpu_s"] = round(observer_s, 2)
    result["loadgen_cpu_us_per_request"] = round((cpu_s - observer_s) * 1e6
                                                 / max(floor.sent - recorder.capped, 1), 1)
    result["loadgen_connections"] = floor.rest.opened
    result["loadgen_capped"] = recorder.capped
    return result, recorder


async def _trade(floor, t: Trader, acct, rng) -> None:
    behaviour = {"mm": traders.market_maker, "retail": traders.retail, "bot": traders.bot}
    await behaviour[t.kind](floor, t, acct, rng)


async def _open_sockets(floor, plan, accounts, rng, counter) -> list:
    """User-data streams for every taker, public subscriptions for retail, churn for bots;
    returns once the user streams are open (fills before that would go unseen)."""
    tasks, opened = [], []
    pairs = sorted(floor.markets.markets)
    for t in plan:
        if t.kind == "mm":
            continue
        key = await sockets.listen_key(floor, accounts[(t.kind, t.index)])
        ev = asyncio.Event()
        opened.append(ev)
        tasks.append(asyncio.ensure_future(_watch(floor, sockets.user_stream(floor, key, ev),
                                                  "user stream")))
        if t.kind == "retail" and t.public_streams:
            chosen = rng.sample(pairs, min(len(pairs), t.public_streams))
            streams = [f"{p.lower()}@{kind}" for p in chosen for kind in ("trade", "depth")]
            tasks.append(asyncio.ensure_future(_watch(
                floor, sockets.public_streams(floor, streams, counter), "public stream")))
        if t.kind == "bot":
            tasks.append(asyncio.ensure_future(sockets.churn(floor, random.Random(rng.random()),
                                                             counter)))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 30)
    return tasks


async def _watch(floor, coro, what: str) -> None:
    """A stream that ends before the run does is an error the report must show."""
    try:
        await coro
    except aiohttp.ClientError as exc:
        floor.recorder.request(time.perf_counter(), "error", f"{what} {type(exc).__name__}")
        return
    if not floor.stop.is_set():
        floor.recorder.request(time.perf_counter(), "error", f"{what} closed by the server")


async def _cancel_quotes(floor, plan, accounts) -> None:
    for t in plan:
        if t.kind == "mm":
            acct = accounts[("mm", t.index)]
            for pair in floor.markets.markets:
                with contextlib.suppress(HttpError, OSError, TimeoutError):
                    await floor.rest.request("DELETE", traders.signed_target(
                        acct, "/api/v3/openOrders", {"symbol": pair}), acct.api_key)


async def _sampling(floor, sampler: StackSampler, current: list) -> None:
    """About once a second, the stack's figures, tagged with the phase running when the
    sample was taken. Apart from the phases' clock: on a starved machine a sample can
    take seconds, and a step must still last what it says."""
    rec = floor.recorder
    while not floor.stop.is_set():
        began = time.perf_counter()
        phase = current[0]
        sample = await asyncio.to_thread(sampler.sample)
        sample["t"] = round(began - rec.started, 2)
        sample["phase"] = phase
        sample["in_flight"] = floor.in_flight
        rec.samples.append(sample)
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))


async def _play(cfg: Config, floor, shape: list[Phase], sampler: StackSampler):
    """Run the phases for their seconds; returns (phases played with their second range,
    the limit that broke or None)."""
    from tqdm import tqdm

    total_s = sum(p.seconds for p in shape)
    bar = tqdm(total=int(total_s), unit="s", disable=not cfg.progress, leave=False,
               desc=f"loadgen {cfg.mode}")
    played, broke = [], None
    rec = floor.recorder
    current = [shape[0].name if shape else ""]
    sampling = asyncio.ensure_future(_sampling(floor, sampler, current))
    try:
        for phase in shape:
            floor.multiplier = phase.multiplier
            current[0] = phase.name
            rec.target(time.perf_counter(), cfg.rate * phase.multiplier, phase.name)
            first = int(time.perf_counter() - rec.started)
            end = time.perf_counter() + phase.seconds
            while (now := time.perf_counter()) < end and not floor.stop.is_set():
                await asyncio.sleep(min(1.0, end - now))
                second = int(time.perf_counter() - rec.started)
                last = rec.totals(max(0, second - 1), second)
                bar.set_postfix(orders_s=last["orders_per_s"], errors=sum(rec.errors.values()),
                                fill_p99=last["fill_ms"]["p99"])
                bar.update(1)
            played.append((phase, first, int(time.perf_counter() - rec.started)))
            if cfg.mode == "ramp":
                broke = step_broken(cfg.limits, rec, played[-1])
                if broke:
                    break
            if floor.stop.is_set():
                break
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        bar.close()
    return played, broke
