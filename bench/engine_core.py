"""Engine core benchmark: the standard workload through engine.engine.Engine.

One Engine.apply call per command, full event output (every event object is built and
returned; the benchmark drops them, as a consumer that has published them would).

    .venv/bin/python bench/engine_core.py [--impl auto|c|python] [--n 1000000] [--runs 3]
                                          [--gc on|off] [--batch 100] [--json]

Reported:
  - ops/s: median of --runs timed runs after one warm-up run, each on a fresh Engine; the
    commands are built before timing. GC: "on" (default) keeps the collector enabled, as
    in the service, after gc.freeze() of the prebuilt commands so full collections do not
    re-walk benchmark input; "off" disables it during the timed loop.
  - latency p50/p99/p99.9 per command in microseconds: a separate pass timing each apply
    with perf_counter_ns (includes ~0.05 us of timer overhead per sample);
  - apply_many: the book's own batch call on chunks of --batch commands (no Engine.apply
    per command), reported separately;
  - peak RSS (ru_maxrss, whole process, including the prebuilt commands);
  - totals from the events: fills, lots traded, cancels (Cancelled with reason CANCELED),
    resting orders and lots at the end.
With --json the last line is one JSON object with all of it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):        # run as a script: import keel from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import workload
from engine.domain import Cancelled, Reason, Trade
from engine.engine import Engine
from engine.markets import Market

# The totals for the standard workload (seed 42).
EXPECTED = {
    1_000_000: {"fills": 192_495, "lots": 4_914_246, "cancels": 253_309,
                "resting_orders": 251_347, "resting_lots": 12_684_653},
    100_000: {"fills": 19_349, "lots": 494_462, "cancels": 25_384,
              "resting_orders": 24_827, "resting_lots": 1_247_696},
}


def bench_market(maker_fee_ppm: int, taker_fee_ppm: int) -> Market:
    return Market(pair=workload.PAIR, base="BTC", quote="USDT", tick_size=Decimal("0.01"),
                  lot_size=Decimal("0.0001"), min_notional=Decimal("0"),
                  maker_fee_ppm=maker_fee_ppm, taker_fee_ppm=taker_fee_ppm, partition=0)


def timed_run(impl: str, market: Market, cmds: list, gc_off: bool):
    """(wall seconds, process CPU seconds, engine) for one run over all commands."""
    engine = Engine([market], impl=impl)
    apply = engine.apply
    if gc_off:
        gc.disable()
    try:
        cpu = time.process_time_ns()
        start = time.perf_counter_ns()
        for cmd in cmds:
            apply(cmd)
        elapsed = time.perf_counter_ns() - start
        cpu = time.process_time_ns() - cpu
    finally:
        gc.enable()
    return elapsed / 1e9, cpu / 1e9, engine


def latency_pass(impl: str, market: Market, cmds: list) -> tuple[list[int], dict, Engine]:
    """Per-command latencies (ns) and the event totals, from one more run."""
    engine = Engine([market], impl=impl)
    apply, clock = engine.apply, time.perf_counter_ns
    lat = [0] * len(cmds)
    fills = lots = cancels = 0
    canceled = int(Reason.CANCELED)
    for i, cmd in enumerate(cmds):
        t0 = clock()
        events = apply(cmd)
        lat[i] = clock() - t0
        for ev in events:
            kind = type(ev)
            if kind is Trade:
                fills += 1
                lots += ev.qty
            elif kind is Cancelled and ev.reason == canceled:
                cancels += 1
    book = engine.book(market.pair)
    totals = {"fills": fills, "lots": lots, "cancels": cancels,
              "resting_orders": len(book), "resting_lots": book.resting_qty()}
    return lat, totals, engine


def apply_many_rate(impl: str, market: Market, cmds: list, batch: int, gc_off: bool) -> float:
    book = Engine([market], impl=impl).book(market.pair)
    apply_many = book.apply_many
    if gc_off:
        gc.disable()
    try:
        start = time.perf_counter_ns()
        for i in range(0, len(cmds), batch):
            apply_many(cmds[i:i + batch])
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return len(cmds) / (elapsed / 1e9)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=("auto", "c", "python"), default="auto")
    p.add_argument("--n", type=int, default=1_000_000, help="operations (default 1,000,000)")
    p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (>= 3)")
    p.add_argument("--gc", choices=("on", "off"), default="on",
                   help="collector during timed sections (default on, input frozen)")
    p.add_argument("--batch", type=int, default=100, help="apply_many chunk size")
    p.add_argument("--maker-fee-ppm", type=int, default=1000)
    p.add_argument("--taker-fee-ppm", type=int, default=2000)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    runs = max(3, args.runs)
    gc_off = args.gc == "off"
    info = machine()

    market = bench_market(args.maker_fee_ppm, args.taker_fee_ppm)
    cmds = list(workload.to_commands(workload.operations(args.n)))
    gc.collect()
    gc.freeze()            # the prebuilt input is not engine state: keep it out of GC walks
    input_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    impl = Engine([market], impl=args.impl).impl
    timed_run(args.impl, market, cmds, gc_off)                       # warm-up
    rates, cpu_rates, finals = [], [], set()
    for _ in range(runs):
        seconds, cpu_seconds, engine = timed_run(args.impl, market, cmds, gc_off)
        rates.append(len(cmds) / seconds)
        cpu_rates.append(len(cmds) / cpu_seconds)
        book = engine.book(market.pair)
        finals.add((len(book), book.resting_qty(), engine.state_hash()))
        del engine, book
    lat, totals, engine = latency_pass(args.impl, market, cmds)
    del engine
    many = apply_many_rate(args.impl, market, cmds, args.batch, gc_off)
    lat.sort()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    expected = EXPECTED.get(args.n)
    result = {
        "ops_per_s": round(statistics.median(rates)),
        **totals,
        "p50_us": round(percentile(lat, 0.50) / 1000, 3),
        "p99_us": round(percentile(lat, 0.99) / 1000, 3),
        "p999_us": round(percentile(lat, 0.999) / 1000, 3),
        "max_us": round(lat[-1] / 1000, 1),
        "apply_many_ops_per_s": round(many),
        "apply_many_batch": args.batch,
        "peak_rss_mb": round(peak_mb, 1),
        "input_rss_mb": round(input_rss_mb, 1),
        "impl": impl,
        "gc": "off" if gc_off else "on (input frozen)",
        "runs": runs,
        "run_ops_per_s": [round(r) for r in rates],
        # per CPU-second of this process: less sensitive to a busy shared machine
        "cpu_ops_per_s": round(statistics.median(cpu_rates)),
        "n_ops": len(cmds),
        "fees_ppm": [args.maker_fee_ppm, args.taker_fee_ppm],
        "runs_agree": len(finals) == 1,
        "totals_match_issue": None if expected is None else totals == expected,
        "machine": info,
    }
    print(f"engine core benchmark: {len(cmds):,} ops of the standard workload through "
          f"Engine.apply, impl={impl}, full event output")
    print(f"  machine: {info['cpu']} x{info['cpus']}, Python {info['python']}, "
          f"load avg at start {info['loadavg_at_start']}")
    print(f"  gc: {result['gc']}; fees maker/taker {args.maker_fee_ppm}/{args.taker_fee_ppm} ppm")
    print(f"  throughput: {result['ops_per_s']:,} ops/s (median of {runs} runs after a warm-up; "
          f"runs: {', '.join(f'{r:,}' for r in result['run_ops_per_s'])})")
    print(f"  per CPU-second of this process: {result['cpu_ops_per_s']:,} ops/s (median)")
    print(f"  apply_many (book, batches of {args.batch}): {result['apply_many_ops_per_s']:,} ops/s")
    print(f"  latency per command: p50 {result['p50_us']} us, p99 {result['p99_us']} us, "
          f"p99.9 {result['p999_us']} us, max {result['max_us']} us")
    print(f"  peak RSS: {result['peak_rss_mb']} MB (prebuilt input alone: "
          f"{result['input_rss_mb']} MB)")
    print(f"  totals: {totals['fills']:,} fills, {totals['lots']:,} lots, "
          f"{totals['cancels']:,} cancels, {totals['resting_orders']:,} resting orders holding "
          f"{totals['resting_lots']:,} lots")
    if expected is not None:
        print(f"  totals match the issue's: {'yes' if result['totals_match_issue'] else 'NO'}; "
              f"timed runs agree on the final state: {'yes' if result['runs_agree'] else 'NO'}")
    if args.json:
        print(json.dumps(result))
    ok = result["runs_agree"] and result["totals_match_issue"] is not False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
