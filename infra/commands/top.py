"""`keel top`: a live terminal view of the stack `keel up` runs on this data dir, read
from every process's /metrics (found in <data dir>/run/state.json), for one machine
where no Prometheus/Grafana runs.

    keel top                 # refresh every 2 s until Ctrl-C
    keel top --once          # one frame (two scrapes --interval apart) and exit
    keel top --once --json   # the same figures as JSON

Rates and percentiles are over the last interval (differences of two scrapes), as
Prometheus' rate() and histogram_quantile() would compute them.
Exit codes: 0 shown, 1 keel up is not running on this data dir.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

from infra.runstate import read_state, supervisor_running
from infra.settings import Settings

# A scrape: metric sample name -> [(labels, value)], every process merged; each label set
# carries `process`, the supervisor's name for where it came from.
Scrape = dict[str, list[tuple[dict[str, str], float]]]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    parser.add_argument("--json", action="store_true", help="figures as JSON (with --once)")


def metrics_endpoints(state: dict) -> dict[str, str]:
    """process name -> its /metrics URL, from the health checks the supervisor recorded:
    an HTTP health URL's host:port also serves /metrics (engine, sinks, the chDB owner,
    the gateway); Kafka and PostgreSQL serve none."""
    out = {}
    for name, info in sorted((state or {}).get("processes", {}).items()):
        health = info.get("health") or {}
        if health.get("kind") != "http":
            continue
        parts = urlsplit(health["target"])
        out[name] = urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))
    return out


def parse(text: str, process: str) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(({**s.labels, "process": process}, s.value))
    return out


def scrape(endpoints: dict[str, str], timeout: float = 2.0,
           only: tuple[str, ...] | None = None) -> tuple[Scrape, dict[str, str]]:
    """Every endpoint at once; returns the merged samples and {process: error} for those
    that did not answer. `only`: metric name prefixes to keep — the text parser is the
    cost of a scrape, and a load run's sampler (which shares the cores with the stack it
    measures) needs three families out of dozens."""
    def one(item):
        name, url = item
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                text = resp.read().decode()
        except OSError as exc:
            return name, "", str(getattr(exc, "reason", exc))
        if only is not None:
            text = "".join(line + "\n" for line in text.splitlines()
                           if line.startswith(only) or line.startswith(("# TYPE", "# HELP"))
                           and line.split(" ", 3)[2].startswith(only))
        return name, text, None

    merged: Scrape = {}
    errors = {}
    with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        for name, text, error in pool.map(one, endpoints.items()):
            if error is not None:
                errors[name] = error
                continue
            for metric, samples in parse(text, name).items():
                merged.setdefault(metric, []).extend(samples)
    return merged, errors


def total(s: Scrape, name: str, **match: str) -> float:
    return sum(v for labels, v in s.get(name, ()) if _matches(labels, match))


def _matches(labels: dict[str, str], match: dict[str, str]) -> bool:
    for key, want in match.items():
        have = labels.get(key, "")
        if want.endswith("*") and have.startswith(want[:-1]):
            continue
        if have != want:
            return False
    return True


def rate(before: Scrape, after: Scrape, name: str, seconds: float, **match: str) -> float:
    if seconds <= 0:
        return 0.0
    # A restarted process resets its counters: count from zero rather than go negative.
    delta = total(after, name, **match) - total(before, name, **match)
    return max(delta, 0.0) / seconds


def buckets(s: Scrape, name: str, **match: str) -> dict[float, float]:
    """le -> cumulative count of a histogram, summed over every matching series."""
    out: dict[float, float] = {}
    for labels, value in s.get(name + "_bucket", ()):
        if _matches(labels, match):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """histogram_quantile over le -> cumulative count: linear inside the bucket, the
    highest finite bound when the quantile falls in +Inf."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def window(before: Scrape, after: Scrape, name: str, **match: str) -> dict[float, float]:
    """Histogram buckets of the interval between two scrapes (what rate() would see)."""
    b0, b1 = buckets(before, name, **match), buckets(after, name, **match)
    return {le: max(count - b0.get(le, 0.0), 0.0) for le, count in b1.items()}


def figures(before: Scrape, after: Scrape, seconds: float, errors: dict[str, str],
            endpoints: dict[str, str], group_lag: dict[str, int] | None = None) -> dict:
    """Everything a frame shows, as plain numbers (also `--json`)."""
    def ms(v):
        return None if v is None else round(v * 1000, 2)

    engine = window(before, after, "exchange_order_latency_seconds")
    order_http = window(before, after, "exchange_http_request_duration_seconds",
                        route="/api/v3/order")
    lag = {f"engine p{labels['partition']}": v
           for labels, v in after.get("exchange_engine_consumer_lag", ())}
    for labels, v in after.get("keel_sink_lag_records", ()):
        key = f"sink-{labels['sink']} {labels['topic']}"
        lag[key] = lag.get(key, 0.0) + v
    for group, v in (group_lag or {}).items():
        lag[f"group {group}"] = v
    dead = sum(rate(before, after, n, seconds) for n in after if n.endswith("dead_letters_total"))
    return {
        "interval_s": round(seconds, 2),
        "processes": {name: ("down: " + errors[name]) if name in errors else "up"
                      for name in endpoints},
        "orders_per_s": round(rate(before, after, "exchange_orders_processed_total", seconds), 1),
        "engine_latency_ms": {f"p{int(q * 100)}": ms(quantile(q, engine))
                              for q in (0.5, 0.95, 0.99)},
        "rest_per_s": round(rate(before, after, "exchange_http_responses_total", seconds), 1),
        "rest_order_latency_ms": {f"p{int(q * 100)}": ms(quantile(q, order_http))
                                  for q in (0.5, 0.99)},
        "rest_errors_per_s": {
            "4xx": round(rate(before, after, "exchange_http_responses_total", seconds,
                              status="4*"), 2),
            "5xx": round(rate(before, after, "exchange_http_responses_total", seconds,
                              status="5*"), 2)},
        "lag_records": {k: int(v) for k, v in sorted(lag.items())},
        "ws_clients": int(total(after, "exchange_ws_connections_active")),
        "ws_msgs_per_s": round(rate(before, after, "exchange_ws_messages_sent_total", seconds), 1),
        "streams_per_s": {role: round(rate(before, after, f"keel_{role}_records_total", seconds), 1)
                          for role in ("accounts", "settlement", "marketdata")
                          if f"keel_{role}_records_total" in after},
        "sink_rows_per_s": round(rate(before, after, "keel_sink_rows_total", seconds), 1),
        "errors": {
            "dead_letters_per_s": round(dead, 2),
            "dead_letters_total": int(sum(total(after, n) for n in after
                                          if n.endswith("dead_letters_total"))),
            "order_timeouts_total": int(total(after, "exchange_order_timeouts_total")),
            "rate_limited_total": int(total(after, "exchange_rate_limited_total")),
            "ws_dropped_total": int(total(after, "exchange_ws_clients_dropped_total")),
            "sink_retries_total": int(total(after, "keel_sink_retries_total")),
            "stores_down": sorted(labels["sink"] for labels, v
                                  in after.get("keel_sink_store_up", ()) if v == 0)},
    }


def render(f: dict, data_dir: str) -> str:
    def pcts(d):
        return "  ".join(f"{k} {'-' if v is None else f'{v:.2f} ms'}" for k, v in d.items())

    procs = "  ".join(f"{n}:{'up' if s == 'up' else 'DOWN'}" for n, s in f["processes"].items())
    lag = "  ".join(f"{k}={v}" for k, v in f["lag_records"].items()) or "-"
    streams = "  ".join(f"{k} {v}/s" for k, v in f["streams_per_s"].items()) or "(none running)"
    e = f["errors"]
    cpu = "  ".join(f"{n} {v:.0f}/{f['wait_pct'].get(n, 0):.0f}"
                    for n, v in sorted(f.get("cpu_pct", {}).items(), key=lambda kv: -kv[1]))
    lines = [
        f"keel top  {data_dir}  {time.strftime('%H:%M:%S')}  (last {f['interval_s']} s)",
        f"processes   {procs}",
        f"CPU %       {cpu or '-'}   (used/waited for a CPU, % of one core)",
        f"orders/s    {f['orders_per_s']:<10} engine latency  {pcts(f['engine_latency_ms'])}",
        f"REST/s      {f['rest_per_s']:<10} POST order      {pcts(f['rest_order_latency_ms'])}"
        f"   4xx/s {f['rest_errors_per_s']['4xx']}  5xx/s {f['rest_errors_per_s']['5xx']}",
        f"WebSocket   {f['ws_clients']} clients  {f['ws_msgs_per_s']} msgs/s",
        f"streams     {streams}   sinks {f['sink_rows_per_s']} rows/s",
        f"lag         {lag}",
        f"errors      dead letters {e['dead_letters_per_s']}/s ({e['dead_letters_total']} total)"
        f"  order timeouts {e['order_timeouts_total']}  rate limited {e['rate_limited_total']}"
        f"  WS dropped {e['ws_dropped_total']}  sink retries {e['sink_retries_total']}"
        + (f"  STORES DOWN {','.join(e['stores_down'])}" if e["stores_down"] else ""),
    ]
    return "\n".join(lines)


def _group_lag(state: dict):
    """Lag of every consumer group from Kafka (the streams workers export none)."""
    bootstrap = (state.get("endpoints") or {}).get("kafka")
    if not bootstrap:
        return None
    from infra.loadgen.lag import GroupLag
    return GroupLag(bootstrap)


def run(args: argparse.Namespace, settings: Settings) -> int:
    state = read_state(settings) if supervisor_running(settings) else None
    if not state:
        print(f"keel top: keel up is not running on {settings.data_dir}", file=sys.stderr)
        return 1
    from infra.loadgen.stack import StackSampler

    endpoints = metrics_endpoints(state)
    interval = max(args.interval, 0.2)
    groups = _group_lag(state)
    cpu = StackSampler(state, {})      # CPU per process from /proc, over each interval
    cpu.sample()
    before, _ = scrape(endpoints)
    taken = time.monotonic()
    try:
        while True:
            time.sleep(max(0.0, taken + interval - time.monotonic()))
            after, errors = scrape(endpoints)
            now = time.monotonic()
            f = figures(before, after, now - taken, errors, endpoints,
                        groups.measure() if groups else None)
            usage = cpu.sample()
            usage["cpu_pct"].pop("loadgen", None)      # that is keel top itself here
            usage["runq_wait_pct"].pop("loadgen", None)
            f["cpu_pct"], f["wait_pct"] = usage["cpu_pct"], usage["runq_wait_pct"]
            if args.once:
                print(json.dumps(f) if args.json else render(f, state["data_dir"]), flush=True)
                return 0
            # Home + clear: redraw in place like top(1).
            sys.stdout.write("\x1b[H\x1b[2J" + render(f, state["data_dir"]) + "\n")
            sys.stdout.flush()
            before, taken = after, now
    except KeyboardInterrupt:
        return 0
