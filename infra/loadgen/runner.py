"""A load run from start to report: users created (PostgreSQL, as `keel users create`
does) and funded through the admin API, traders started, the phases of the mode played
while the stack's own metrics are sampled, then a verdict per mode."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from engine.markets import MarketsConfig
from infra.loadgen import sockets, traders
from infra.loadgen.population import Phase, Trader, phases, population
from infra.loadgen.record import Recorder
from infra.settings import Settings

FUNDS = {"USDT": "1000000000"}        # per user; every base asset gets BASE_FUNDS
BASE_FUNDS = "1000000"


@dataclass
class Limits:
    """What counts as broken (ramp stops at the first step that breaks one)."""
    max_error_rate: float = 0.01
    p99_fill_ms: float = 50.0
    max_lag: float = 5000.0           # records behind, at the end of a step, any stage
    min_achieved: float = 0.9         # achieved / target order rate


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
    """PostgreSQL may still be starting when a run is launched right after `keel up`."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


async def fund(floor: traders.Floor, admin: traders.Account, accounts, markets: MarketsConfig,
               timeout: float = 120.0) -> None:
    """Deposit through the admin API; retried while accounts is still starting."""
    deadline = time.monotonic() + timeout
    sem = asyncio.Semaphore(16)

    async def one(acct, asset, amount):
        async with sem:
            while True:
                url = traders.signed_url(admin, floor.base, "/api/v3/admin/deposit",
                                         {"userId": acct.user_id, "asset": asset,
                                          "amount": amount})
                with contextlib.suppress(aiohttp.ClientError):
                    async with floor.http.post(url, headers={"X-MBX-APIKEY": admin.api_key}) as r:
                        if r.status == 200:
                            return
                        body = await r.text()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deposit for user {acct.user_id} refused: {body}")
                await asyncio.sleep(0.5)
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
        acct = accounts[("mm", t.index)]
        for pair in sorted(floor.markets.markets):
            for side, factor in (("BUY", "0.999"), ("SELL", "1.001")):
                while True:
                    url = traders.signed_url(acct, floor.base, "/api/v3/order", {
                        "symbol": pair, "side": side, "type": "LIMIT", "timeInForce": "GTC",
                        "price": traders._price(floor, pair, Decimal(factor)),
                        "quantity": traders._qty(floor, pair, traders.QUOTE_NOTIONAL * 50),
                        "newOrderRespType": "ACK"})
                    body = ""
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with floor.http.post(url, headers={"X-MBX-APIKEY": acct.api_key}) as r:
                            if r.status == 200:
                                break
                            body = await r.text()
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the order path never answered: {body}")
                    await asyncio.sleep(0.5)


def sample_stack(state: dict | None, endpoints: dict[str, str], groups=None) -> dict:
    """The stack's own view, for the report: lag per stage (the processes' gauges and
    every consumer group's committed lag), open WebSockets, memory."""
    from infra.commands.top import scrape, total

    out = {"lag": {}, "rss_mb": {}, "ws_connections": None}
    if groups is not None:
        out["lag"].update({f"group {g}": float(v) for g, v in groups.measure().items()})
    if endpoints:
        s, _errors = scrape(endpoints, timeout=1.0)
        out["lag"]["engine"] = total(s, "exchange_engine_consumer_lag")
        for labels, v in s.get("keel_sink_lag_records", ()):
            key = f"sink-{labels['sink']}"
            out["lag"][key] = out["lag"].get(key, 0.0) + v
        if "exchange_ws_connections_active" in s:
            out["ws_connections"] = total(s, "exchange_ws_connections_active")
    for name, info in ((state or {}).get("processes") or {}).items():
        pid = info.get("pid")
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, TypeError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"][name] = round(int(line.split()[1]) / 1024, 1)
    return out


async def run_load(cfg: Config, settings: Settings, markets: MarketsConfig,
                   state: dict | None) -> tuple[dict, Recorder]:
    from infra.commands.top import metrics_endpoints

    check_host(cfg.base_url, cfg.allowed_hosts)
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
                              asyncio.Event(), cfg.max_requests)
        setup_started = time.monotonic()
        await fund(floor, admin, accounts, markets)
        await warm_up(floor, plan, accounts)
        background = await _open_sockets(floor, plan, accounts, rng, counter)
        setup_s = time.monotonic() - setup_started
        recorder.started = time.perf_counter()
        cpu_started = time.process_time()
        workers = [asyncio.ensure_future(_trade(floor, t, accounts[(t.kind, t.index)],
                                                random.Random(rng.random())))
                   for t in plan]
        try:
            groups = None
            if state and (state.get("endpoints") or {}).get("kafka"):
                from infra.loadgen.lag import GroupLag
                groups = GroupLag(state["endpoints"]["kafka"])
            played, broke = await _play(cfg, floor, shape, state, endpoints, groups)
        finally:
            floor.stop.set()
            for task in [*workers, *background]:
                task.cancel()
            await asyncio.gather(*workers, *background, return_exceptions=True)
            if floor.tasks:  # answers still on their way belong to the run
                await asyncio.wait(floor.tasks, timeout=cfg.request_timeout)
            await _cancel_quotes(floor, plan, accounts)
    result = verdict(cfg, recorder, played, broke, setup_s, counter, floor.sent)
    # The load generator shares the machine's cores with the stack: say what it took.
    result["loadgen_cpu_s"] = round(time.process_time() - cpu_started, 1)
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
            for pair in floor.markets.markets:
                url = traders.signed_url(accounts[("mm", t.index)], floor.base,
                                         "/api/v3/openOrders", {"symbol": pair})
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with floor.http.delete(url, headers={
                            "X-MBX-APIKEY": accounts[("mm", t.index)].api_key}) as r:
                        await r.read()


async def _play(cfg: Config, floor, shape: list[Phase], state, endpoints, groups=None):
    """Run the phases second by second; returns (phases played with their second range,
    the limit that broke or None)."""
    from tqdm import tqdm

    total_s = sum(p.seconds for p in shape)
    bar = tqdm(total=int(total_s), unit="s", disable=not cfg.progress, leave=False,
               desc=f"loadgen {cfg.mode}")
    played, broke = [], None
    rec = floor.recorder
    try:
        for phase in shape:
            floor.multiplier = phase.multiplier
            first = int(time.perf_counter() - rec.started)
            end = time.perf_counter() + phase.seconds
            while time.perf_counter() < end and not floor.stop.is_set():
                now = time.perf_counter()
                rec.target(now, cfg.rate * phase.multiplier, phase.name)
                sample = await asyncio.to_thread(sample_stack, state, endpoints, groups)
                sample["t"] = round(now - rec.started, 2)
                sample["phase"] = phase.name
                rec.samples.append(sample)
                last = rec.totals(max(0, int(now - rec.started) - 1), int(now - rec.started))
                bar.set_postfix(orders_s=last["orders_per_s"], errors=sum(rec.errors.values()),
                                fill_p99=last["fill_ms"]["p99"])
                bar.update(1)
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - now)))
            played.append((phase, first, int(time.perf_counter() - rec.started)))
            if cfg.mode == "ramp":
                broke = step_broken(cfg.limits, rec, played[-1])
                if broke:
                    break
            if floor.stop.is_set():
                break
    finally:
        bar.close()
    return played, broke


def step_broken(limits: Limits, rec: Recorder, step) -> str | None:
    """Which limit a ramp step broke first (in the order an operator cares), or None.
    The step's first second is a transition and is left out."""
    phase, first, last = step
    t = rec.totals(first + 1, last)
    lag = max((max(s["lag"].values(), default=0.0) for s in rec.samples
               if s["phase"] == phase.name), default=0.0)
    if t["error_rate"] > limits.max_error_rate:
        return "error_rate"
    p99 = t["fill_ms"]["p99"]
    if p99 is not None and p99 > limits.p99_fill_ms:
        return "p99_order_to_fill"
    if lag > limits.max_lag:
        return "lag"
    if t["target_orders_per_s"] and t["orders_per_s"] < limits.min_achieved * t["target_orders_per_s"]:
        return "throughput"
    return None


def verdict(cfg: Config, rec: Recorder, played, broke, setup_s, counter, sent) -> dict:
    overall = rec.totals()
    steps = []
    for phase, first, last in played:
        t = rec.totals(first + 1 if cfg.mode == "ramp" else first, last)
        steps.append({"phase": phase.name, "multiplier": phase.multiplier,
                      "from_s": first, "to_s": last, **t})
    out = {"mode": cfg.mode, "users": cfg.users, "base_rate": cfg.rate,
           "setup_s": round(setup_s, 1), "requests_sent": sent, **overall,
           "errors": dict(rec.errors), "rejections": dict(rec.rejections),
           "ws": counter, "phases": steps}
    if cfg.mode == "ramp":
        good = [s for s, (p, _, _) in zip(steps, played, strict=True)
                if not (broke and p is played[-1][0])]
        best = max(good, key=lambda s: s["orders_per_s"], default=None)
        out["breaking_point"] = broke or "none (max steps reached)"
        out["max_sustained_orders_per_s"] = best["orders_per_s"] if best else 0.0
        out["p99_order_to_fill_ms"] = best["fill_ms"]["p99"] if best else None
    if cfg.mode == "spike":
        out["recovery_s"] = recovery_seconds(rec, played)
    if cfg.mode == "soak":
        out["growth"] = growth(rec.samples)
    return out


def recovery_seconds(rec: Recorder, played) -> float | None:
    """Seconds after the spike until a second looks like before it: no errors, fill p99
    within twice the pre-spike p99 (at least 50 ms), and the spike's backlog drained (no
    more than 1.5x the target answered in that second). None if that never happened."""
    if len(played) < 3:
        return None
    (_before, b0, b1), (_spike, _s0, s1), (_after, a0, a1) = played
    base = rec.totals(b0, b1)["fill_ms"]["p99"] or 0.0
    bound = max(2 * base, 50.0)
    for i in range(a0, a1):
        t = rec.totals(i, i + 1)
        p99 = t["fill_ms"]["p99"]
        drained = t["orders"] <= 1.5 * max(t["target_orders_per_s"], 1.0)
        if t["requests"]["error"] == 0 and drained and (p99 is None or p99 <= bound):
            return float(i - s1)
    return None


def growth(samples: list[dict]) -> dict:
    """First -> last sample of memory per process, lag per stage and open WebSockets."""
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    minutes = max((last["t"] - first["t"]) / 60, 1e-9)
    out = {}
    for kind in ("rss_mb", "lag"):
        for name, v in last[kind].items():
            if name in first[kind]:
                d = v - first[kind][name]
                out[f"{kind}:{name}"] = {"first": first[kind][name], "last": v,
                                         "per_min": round(d / minutes, 2)}
    if first["ws_connections"] is not None and last["ws_connections"] is not None:
        out["ws_connections"] = {"first": first["ws_connections"],
                                 "last": last["ws_connections"]}
    return out
