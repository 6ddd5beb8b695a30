"""What a run's figures mean: whether a ramp step broke a limit (and which, by how much,
with the stack's state at that point), the verdict of each mode, a spike's recovery and
a soak's growth. Pure: reads a Recorder, never the clock."""
from __future__ import annotations

import os
from dataclasses import dataclass

from infra.loadgen.record import Recorder, percentile


@dataclass
class Limits:
    """What counts as broken (ramp stops at the first step that breaks one)."""
    max_error_rate: float = 0.01
    p99_fill_ms: float = 50.0
    max_lag: float = 5000.0           # records behind, held over 3 samples, any stage
    min_achieved: float = 0.9         # answered / sent, and sent / target


def _step_samples(rec: Recorder, phase_name: str) -> list[dict]:
    return [s for s in rec.samples if s["phase"] == phase_name]


def held_lag(samples: list[dict], window: int = 3) -> dict[str, float]:
    """Per stage, the lag it held over the step's last `window` samples (their minimum):
    a group that commits every second shows a sawtooth of uncommitted records that is
    not a backlog; a backlog stays up from one sample to the next."""
    tail = samples[-window:]
    stages = {k for s in tail for k in s["lag"]}
    return {k: min(s["lag"].get(k, 0.0) for s in tail) for k in sorted(stages)}


def backlog_growing(samples: list[dict], sent_per_s: float, short: float) -> bool:
    """Answers falling behind what was sent, as a backlog: requests unanswered still
    growing over the second half of the step by at least `short` of what was sent then.
    A step's answers trail its sends by the latency, so answered/s alone reads short at
    every step up (by rate x latency); a stack that keeps up holds its in-flight count
    level after that, one that does not keeps adding to it."""
    counts = [s["in_flight"] for s in samples if s.get("in_flight") is not None]
    if len(counts) < 4:
        return True                    # nothing to tell them apart: answered/s decides
    half = counts[len(counts) // 2:]
    return half[-1] - half[0] > short * sent_per_s * (len(half) - 1)


def mean_cpu(samples: list[dict], key: str = "cpu_pct") -> dict[str, float]:
    """Average CPU (% of one core) per process over the samples that measured it
    (key "runq_wait_pct": time waited runnable for a CPU, likewise)."""
    sums: dict[str, list[float]] = {}
    for s in samples:
        for name, v in (s.get(key) or {}).items():
            sums.setdefault(name, []).append(v)
    return {k: round(sum(v) / len(v), 1) for k, v in sorted(sums.items(), key=lambda kv: -sum(kv[1]))}


SATURATED = 0.85     # share of the machine's cores in use that counts as full


def cpu_ms_per_order(cpu_pct: dict[str, float], orders_per_s: float) -> dict[str, float]:
    """Milliseconds of CPU each process spent per answered order over a step (its idle
    polling included), busiest first, and their sum as "total"."""
    if not orders_per_s or not cpu_pct:
        return {}
    out = {k: round(10 * v / orders_per_s, 3) for k, v in cpu_pct.items()}
    return {**out, "total": round(sum(out.values()), 3)}


def cpu_ceiling(steps: list[dict], cores: int | None = None,
                full: float = SATURATED) -> dict | None:
    """The order rate at which the machine's cores are full. When steps already used
    `full` of them or more, the highest rate such a step carried is the answer, measured
    ("saturated": the processes could not get more CPU, so a line through the steps
    would bend; batching may still carry a little more). Otherwise
    a straight line through the steps' (answered orders/s, CPU of every process): its
    slope is what an extra order costs, its intercept what the stack burns idle, and the
    rate it reaches all cores at is an estimate. None with fewer than two steps at
    different rates and none saturated. A ceiling, not a promise: latency limits break
    well before the cores are full."""
    cores = cores or os.cpu_count() or 1
    points = [(s["orders_per_s"], sum(s["cpu_pct"].values())) for s in steps
              if s.get("orders_per_s") and s.get("cpu_pct")]
    busy = [(x, y) for x, y in points if y >= full * 100 * cores]
    if busy:
        x, y = max(busy)
        return {"cores": cores, "saturated": True, "cpu_pct": round(y, 1),
                "cpu_ms_per_order": round(10 * y / x, 3), "orders_per_s": x}
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    idle = my - slope * mx
    ceiling = (100 * cores - idle) / slope if slope > 0 else None
    return {"cores": cores, "saturated": False, "cpu_ms_per_extra_order": round(slope * 10, 3),
            "idle_cpu_pct": round(idle, 1),
            "orders_per_s": round(ceiling, 0) if ceiling and ceiling > 0 else None}


def ceiling_text(c: dict) -> str:
    """cpu_ceiling's result in one line."""
    if c.get("saturated"):
        return (f"the {c['cores']} cores were full ({c['cpu_pct']}% of a core) at "
                f"{c['orders_per_s']:g} orders/s, {c['cpu_ms_per_order']} ms of CPU per order "
                f"across every process")
    return (f"{c['cpu_ms_per_extra_order']} ms of CPU per extra order across every process, "
            f"{c['idle_cpu_pct']}% of a core idle: {c['cores']} cores would be full near "
            f"{c['orders_per_s']:.0f} orders/s (a straight-line estimate)")


def judge(limits: Limits, rec: Recorder, step) -> dict:
    """A ramp step's figures and the first limit it broke (in the order an operator
    cares: errors, latency, backlog, then answers falling behind what was sent). The
    step's first second is a transition and is left out. A step where the load generator
    itself could not send what was asked breaks as `loadgen`: that is no limit of the
    stack, and the report says so."""
    phase, first, last = step
    t = rec.totals(first + 1, last)
    samples = _step_samples(rec, phase.name)
    lag = held_lag(samples)
    worst = max(lag.items(), key=lambda kv: kv[1], default=(None, 0.0))
    out = {"step": phase.name, "target_orders_per_s": t["target_orders_per_s"],
           "sent_orders_per_s": t["sent_orders_per_s"],
           "answered_orders_per_s": t["orders_per_s"], "error_rate": t["error_rate"],
           "p99_order_to_fill_ms": t["fill_ms"]["p99"], "p99_order_to_ack_ms": t["ack_ms"]["p99"],
           "lag_held": lag, "cpu_pct": mean_cpu(samples),
           "runq_wait_pct": mean_cpu(samples, "runq_wait_pct"), "broke": None}
    out["cpu_ms_per_order"] = cpu_ms_per_order(out["cpu_pct"], t["orders_per_s"])

    def broke(limit: str, value, threshold, **more) -> dict:
        return {**out, "broke": limit, "value": value, "threshold": threshold, **more}

    if t["error_rate"] > limits.max_error_rate:
        common = sorted(rec.errors.items(), key=lambda kv: -kv[1])[:2]
        return broke("error_rate", t["error_rate"], limits.max_error_rate,
                     errors=[f"{detail} x{n}" for detail, n in common])
    p99 = t["fill_ms"]["p99"]
    if p99 is not None and p99 > limits.p99_fill_ms:
        return broke("p99_order_to_fill", p99, limits.p99_fill_ms)
    if worst[1] > limits.max_lag:
        return broke("lag", worst[1], limits.max_lag, stage=worst[0])
    sent, target = t["sent_orders_per_s"], t["target_orders_per_s"]
    if (sent and t["orders_per_s"] < limits.min_achieved * sent
            and backlog_growing(samples, sent, 1 - limits.min_achieved)):
        return broke("throughput", t["orders_per_s"], round(limits.min_achieved * sent, 1),
                     in_flight=[s.get("in_flight") for s in samples])
    due = sent + t["held_orders_per_s"]
    if target and due < limits.min_achieved * target:
        return broke("loadgen", due, round(limits.min_achieved * target, 1))
    return out


def step_broken(limits: Limits, rec: Recorder, step) -> str | None:
    """The limit a ramp step broke first, or None."""
    return judge(limits, rec, step)["broke"]


def describe(j: dict) -> str:
    """One line an operator reads: where and how the ramp broke."""
    if not j.get("broke"):
        return f"{j['step']}: held every limit"
    what = {"error_rate": "error rate", "p99_order_to_fill": "p99 order->fill (ms)",
            "lag": f"lag of {j.get('stage')} (records held)",
            "throughput": "orders answered/s against sent",
            "loadgen": "orders the load generator sent/s against the target"}[j["broke"]]
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in list(j["cpu_pct"].items())[:6]) or "-"
    per_order = (j.get("cpu_ms_per_order") or {}).get("total")
    waited = sum((j.get("runq_wait_pct") or {}).values())
    hops = ", ".join(f"{h} p50 {v['p50']:.0f} p99 {v['p99']:.0f}"
                     for h, v in (j.get("stages_ms") or {}).items())
    return (f"{j['step']} (target {j['target_orders_per_s']}/s, sent {j['sent_orders_per_s']}/s, "
            f"answered {j['answered_orders_per_s']}/s) broke {j['broke']}: {what} "
            f"{j['value']} against {j['threshold']}; CPU {cpu}"
            + (f" ({per_order:.2f} ms of CPU per order in all)" if per_order else "")
            + (f"; the stack's processes waited {waited:.0f}% of a core runnable for a CPU"
               if waited else "")
            + (f"; ms after the gateway received an order: {hops}" if hops else "")
            + _errors_hint(j.get("errors") or []))


def _errors_hint(errors: list[str]) -> str:
    """The commonest errors, and what to do when it is the gateway's own rate limit: a
    load test from one IP meets the per-IP request weight limit (6000 a minute, shared by
    runs less than a minute apart) long before the stack is loaded, and at a few hundred
    orders/s each simulated user its API key's (600 a minute standard, 6000 VIP)."""
    if not errors:
        return ""
    hint = ("; these are the gateway's rate limits, not the stack's capacity: start the "
            "stack with KEEL_GATEWAY_IP_LIMIT, KEEL_GATEWAY_STANDARD_LIMIT and "
            "KEEL_GATEWAY_VIP_LIMIT raised"
            if any(" 429 " in e or "-1003" in e for e in errors) else "")
    return "; errors mostly: " + "; ".join(errors) + hint


def stage_figures(clock, first: int, last: int) -> dict[str, dict]:
    """p50/p99 ms from the gateway's receipt to each hop (stages.py), for requests
    received in [first, last); {} without a stage clock."""
    if clock is None:
        return {}
    out = {}
    for hop, values in clock.window(first, last).items():
        if values:
            out[hop] = {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
                        "n": len(values)}
    return out


def verdict(cfg, rec: Recorder, played, broke, setup_s, counter, sent, clock=None) -> dict:
    overall = rec.totals()
    steps = []
    for phase, first, last in played:
        lo = first + 1 if cfg.mode == "ramp" else first
        t = rec.totals(lo, last)
        samples = _step_samples(rec, phase.name)
        cpu = mean_cpu(samples)
        steps.append({"phase": phase.name, "multiplier": phase.multiplier,
                      "from_s": first, "to_s": last, **t,
                      "cpu_pct": cpu, "cpu_ms_per_order": cpu_ms_per_order(cpu, t["orders_per_s"]),
                      "runq_wait_pct": mean_cpu(samples, "runq_wait_pct"),
                      "lag_held": held_lag(samples),
                      "stages_ms": stage_figures(clock, lo, last)})
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
        out["cpu_ceiling"] = cpu_ceiling(steps)
        if broke and played:
            j = judge(cfg.limits, rec, played[-1])
            j["stages_ms"] = steps[-1]["stages_ms"]
            out["broke_at"] = j
            out["breaking_point_detail"] = describe(j)
            if len(played) == 1:
                out["breaking_point_detail"] += (
                    f" (the first step: nothing was sustained; start lower than --rate "
                    f"{cfg.rate:g} to find what holds)")
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
