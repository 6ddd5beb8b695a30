"""`keel loadgen MODE`: drive the real gateway over REST and WebSocket with the seed's
trader population (market makers, retail, bots), bounded in time and requests.

    keel loadgen baseline --seconds 30 --rate 100 --report out/
    keel loadgen ramp --rate 250 --step-seconds 10 --json    # x2 a step until a limit breaks
    keel loadgen spike --seconds 60                           # x10 for the middle third
    keel loadgen soak --seconds 3600 --report soak/           # growth of memory, lag, sockets

Users are created in the gateway's user table (as `keel users create` does: same
PostgreSQL and KEEL_GATEWAY_MASTER_KEY as the gateway) and funded through the admin
deposit endpoint. The gateway's per-IP and VIP limits must allow the rate asked for
(KEEL_GATEWAY_IP_LIMIT, KEEL_GATEWAY_VIP_LIMIT): a 429 on those scopes counts as an error.
With --json the last line is one JSON object (ramp: max_sustained_orders_per_s,
p99_order_to_fill_ms, breaking_point, and where it broke: breaking_point_detail and
broke_at with the limit's value, CPU and CPU wait per process, lag per stage and latency
per stage of the order path). Exit codes: 0 no errors, 1 errors seen (or the
ramp broke on its first step), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from infra.settings import Settings

MODES = ("baseline", "ramp", "spike", "soak")
DEFAULT_SECONDS = {"baseline": 30.0, "ramp": 80.0, "spike": 45.0, "soak": 600.0}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--url", default=None,
                        help="gateway base URL (default http://KEEL_GATEWAY_HOST:PORT)")
    parser.add_argument("--allow-host", action="append", default=[],
                        help="a non-loopback host this run may target (repeatable)")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="orders/s at the mode's x1 (all users together)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="bound on the measured time (default by mode: "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SECONDS.items()) + ")")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="ramp step length")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="bound on REST requests sent; the run stops when reached")
    parser.add_argument("--max-error-rate", type=float, default=0.01)
    parser.add_argument("--p99-fill-ms", type=float, default=50.0)
    parser.add_argument("--max-lag", type=float, default=5000.0,
                        help="records a stage may hold behind over 3 samples in a row")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="seconds a REST answer may take before it counts as an error "
                             "(keep above KEEL_GATEWAY_ORDER_TIMEOUT_MS)")
    parser.add_argument("--recv-window", type=int, default=None,
                        help="recvWindow (ms) on signed requests; the gateway's default is "
                             "5000, and a request it reads later than that is refused "
                             "(-1021, an error)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="write report.md + PNGs here")
    parser.add_argument("--json", action="store_true", help="last line: the result as JSON")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from engine.markets import MarketsConfigError, load_markets
    from infra.loadgen import report
    from infra.loadgen.population import mm_rate_warning, population
    from infra.loadgen.runner import Config, check_host, run_load
    from infra.loadgen.verdict import Limits
    from infra.runstate import read_state, supervisor_running

    base = args.url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        markets = load_markets(settings.markets_file)
        check_host(base, tuple(args.allow_host))
        warning = mm_rate_warning(population(args.users, args.rate))
    except (MarketsConfigError, ValueError) as exc:
        print(f"keel loadgen: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"keel loadgen: note: {warning}", file=sys.stderr)
    cfg = Config(args.mode, base, users=args.users, rate=args.rate,
                 seconds=args.seconds or DEFAULT_SECONDS[args.mode],
                 step_seconds=args.step_seconds, max_requests=args.max_requests,
                 seed=args.seed, allowed_hosts=tuple(args.allow_host),
                 progress=not args.no_progress and sys.stderr.isatty(),
                 request_timeout=args.request_timeout, recv_window=args.recv_window,
                 limits=Limits(args.max_error_rate, args.p99_fill_ms, args.max_lag))
    # The stack's metrics (lag, memory) when a keel up runs on this data dir.
    state = read_state(settings) if supervisor_running(settings) else None
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result, recorder = runner.run(run_load(cfg, settings, markets, state))
    except (RuntimeError, TimeoutError) as exc:   # setup never got through: say why
        print(f"keel loadgen: setup failed: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if args.report:
        command = "keel loadgen " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        path = report.write(args.report, result, recorder, command)
        print(f"keel loadgen: report {path}", file=sys.stderr)
    print(_summary(result))
    if args.json:
        print(json.dumps(result if args.mode != "ramp" else {
            k: result.get(k) for k in (
                "max_sustained_orders_per_s", "p99_order_to_fill_ms", "breaking_point",
                "breaking_point_detail", "broke_at", "cpu_ceiling", "mode", "users", "base_rate",
                "error_rate", "loadgen_cpu_s", "loadgen_cpu_us_per_request", "phases")}))
    if args.mode == "ramp":
        return 0 if result["max_sustained_orders_per_s"] > 0 else 1
    return 0 if result["requests"]["error"] == 0 else 1


def _loop_factory():
    """uvloop where installed (as the gateway runs): the load generator shares the
    machine's cores with the stack, and libuv's loop costs it less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _summary(r: dict) -> str:
    line = (f"{r['mode']}: {r['orders_per_s']} orders/s over {r['seconds']} s, "
            f"errors {r['requests']['error']} ({r['error_rate']:.3%}), "
            f"ack p99 {r['ack_ms']['p99']} ms, fill p99 {r['fill_ms']['p99']} ms")
    if r["mode"] == "ramp":
        line += (f"; max sustained {r['max_sustained_orders_per_s']} orders/s, "
                 f"broke on {r['breaking_point']}")
        if r.get("breaking_point_detail"):
            line += f"\n  {r['breaking_point_detail']}"
        c = r.get("cpu_ceiling")
        if c and c.get("orders_per_s"):
            from infra.loadgen.verdict import ceiling_text

            line += "\n  CPU: " + ceiling_text(c)
    if r["mode"] == "spike":
        line += f"; recovery {r['recovery_s']} s"
    return line
