"""`--report DIR`: report.md with the run's figures and, when matplotlib is installed
(`pip install keel[loadgen]`), PNG charts: throughput, order->ack and order->fill
latency p50/p95/p99, error rate, consumer lag per stage, memory and CPU per process."""
from __future__ import annotations

import json
from pathlib import Path

from infra.loadgen.record import Recorder, percentile
from infra.loadgen.verdict import ceiling_text


def series(rec: Recorder) -> dict[str, list]:
    """Per-second columns for the charts (and for a reader of report.json)."""
    cols: dict[str, list] = {"t": [], "target": [], "orders": [], "error_rate": []}
    for q in ("p50", "p95", "p99"):
        cols[f"ack_{q}"], cols[f"fill_{q}"] = [], []
    for i, s in enumerate(rec.seconds):
        answered = sum(s.requests.values())
        cols["t"].append(i)
        cols["target"].append(s.target_orders_per_s)
        cols["orders"].append(s.orders)
        cols["error_rate"].append(s.requests["error"] / answered if answered else 0.0)
        for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            cols[f"ack_{q}"].append(percentile(s.ack_ms, v))
            cols[f"fill_{q}"].append(percentile(s.fill_ms, v))
    return cols


def charts(rec: Recorder, out: Path) -> list[str]:
    """PNG files written, or [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    cols = series(rec)
    written = []

    def save(name, title, ylabel, lines, logy=False):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for label, xs, ys in lines:
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)

    t = cols["t"]
    save("throughput.png", "Orders per second", "orders/s",
         [("target", t, cols["target"]), ("answered", t, cols["orders"])])
    save("latency_ack.png", "Order -> ack (REST answer)", "ms",
         [(q, t, cols[f"ack_{q}"]) for q in ("p50", "p95", "p99")], logy=True)
    save("latency_fill.png", "Order -> fill on the user's WebSocket", "ms",
         [(q, t, cols[f"fill_{q}"]) for q in ("p50", "p95", "p99")], logy=True)
    save("errors.png", "Error rate", "errors / requests", [("errors", t, cols["error_rate"])])
    st = [s["t"] for s in rec.samples]
    stages = sorted({k for s in rec.samples for k in s["lag"]})
    save("lag.png", "Consumer lag per stage", "records",
         [(k, st, [s["lag"].get(k) for s in rec.samples]) for k in stages])
    procs = sorted({k for s in rec.samples for k in s["rss_mb"]})
    save("memory.png", "Memory per process (RSS)", "MB",
         [(k, st, [s["rss_mb"].get(k) for s in rec.samples]) for k in procs])
    busy = sorted({k for s in rec.samples for k in s.get("cpu_pct", {})})
    save("cpu.png", "CPU per process (the load generator's own included)", "% of one core",
         [(k, st, [s.get("cpu_pct", {}).get(k) for s in rec.samples]) for k in busy])
    return written


def _ms(d: dict) -> str:
    return " / ".join("-" if v is None else f"{v:.1f}" for v in d.values())


def markdown(result: dict, pngs: list[str], command: str) -> str:
    r = result
    lines = [f"# Keel load test: {r['mode']}", "",
             f"Command: `{command}`", "",
             "| figure | value |", "|---|---|",
             f"| users | {r['users']} (market makers 5%, retail 80%, bots 15%) |",
             f"| base order rate | {r['base_rate']} orders/s |",
             f"| seconds measured | {r['seconds']} (setup {r['setup_s']} s before) |",
             f"| orders answered | {r['orders']} ({r['orders_per_s']} /s) |",
             f"| requests sent | {r['requests_sent']} |",
             f"| load generator CPU | {r.get('loadgen_cpu_s', '-')} s, "
             f"{r.get('loadgen_cpu_us_per_request', '-')} us per request (same machine) |",
             f"| outcomes | {', '.join(f'{k} {v}' for k, v in r['requests'].items())} |",
             f"| error rate | {r['error_rate']:.4%} |",
             f"| order -> ack p50/p95/p99 ms | {_ms(r['ack_ms'])} |",
             f"| order -> fill p50/p95/p99 ms | {_ms(r['fill_ms'])} ({r['fills']} fills timed) |",
             f"| WebSocket | {', '.join(f'{k} {v}' for k, v in r['ws'].items()) or '-'} |"]
    if r["mode"] == "ramp":
        lines += [f"| max sustained | {r['max_sustained_orders_per_s']} orders/s, p99 "
                  f"order->fill {r['p99_order_to_fill_ms']} ms |",
                  f"| breaking point | {r['breaking_point']} |"]
        c = r.get("cpu_ceiling")
        if c and c.get("orders_per_s"):
            lines.append(f"| CPU ceiling | {ceiling_text(c)} |")
    if r["mode"] == "spike":
        rec = r["recovery_s"]
        lines.append(f"| recovery after the spike | "
                     f"{'not within the run' if rec is None else f'{rec:.0f} s'} |")
    lines += ["", "## Phases", "",
              "| phase | x | seconds | target/s | sent/s | answered/s | error rate "
              "| ack p99 ms | fill p99 ms | busiest processes (% of a core) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in r["phases"]:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in list(p.get("cpu_pct", {}).items())[:4])
        lines.append(f"| {p['phase']} | {p['multiplier']:g} | {p['seconds']} | "
                     f"{p['target_orders_per_s']} | {p.get('sent_orders_per_s', '-')} | "
                     f"{p['orders_per_s']} | {p['error_rate']:.4%} | {p['ack_ms']['p99']} | "
                     f"{p['fill_ms']['p99']} | {cpu or '-'} |")
    if any(p.get("stages_ms") for p in r["phases"]):
        lines += ["", "## Latency per stage", "",
                  "Milliseconds after the gateway received an order until: the gateway had "
                  "written it to keel.requests / accounts had written it to keel.orders / "
                  "the engine had written its events / a read_committed reader saw them "
                  "(p50 / p99). The client's order->fill adds the gateway's feed and "
                  "WebSocket on top.", "",
                  "| phase | requests | orders | events | committed |", "|---|---|---|---|---|"]
        for p in r["phases"]:
            st = p.get("stages_ms") or {}
            cells = [f"{st[h]['p50']:.0f} / {st[h]['p99']:.0f}" if h in st else "-"
                     for h in ("requests", "orders", "events", "committed")]
            lines.append(f"| {p['phase']} | " + " | ".join(cells) + " |")
    if r["mode"] == "ramp":
        lines += ["", "## Where it broke", "", _broke(r)]
    if r.get("growth"):
        lines += ["", "## Growth over the soak", "", "| what | first | last | per minute |",
                  "|---|---|---|---|"]
        for k, g in r["growth"].items():
            lines.append(f"| {k} | {g['first']} | {g['last']} | {g.get('per_min', '')} |")
    if r["errors"] or r["rejections"]:
        lines += ["", "## Errors and rejections", ""]
        lines += [f"- error: {k} x{v}" for k, v in r["errors"].items()]
        lines += [f"- rejected (expected): {k} x{v}" for k, v in r["rejections"].items()]
    lines += ["", "## Charts", ""]
    lines += [f"![{p}]({p})" for p in pngs] or ["(matplotlib not installed: "
                                                "`pip install keel[loadgen]`)"]
    return "\n".join(lines) + "\n"


def _broke(r: dict) -> str:
    j = r.get("broke_at")
    if not j:
        return "Nothing broke within the steps run."
    out = [r["breaking_point_detail"] + ".", ""]
    if j["broke"] == "loadgen":
        out += ["The load generator could not send what the step asked for: this is a limit "
                "of the machine the load generator shares with the stack, not a verdict on "
                "the stack.", ""]
    out += ["| process | CPU % of a core | waited for a CPU % | | stage | lag held (records) |",
            "|---|---|---|---|---|---|"]
    cpu, lag = list(j["cpu_pct"].items()), list(j["lag_held"].items())
    wait = j.get("runq_wait_pct") or {}
    for i in range(max(len(cpu), len(lag))):
        c = cpu[i] if i < len(cpu) else ("", "")
        g = lag[i] if i < len(lag) else ("", "")
        out.append(f"| {c[0]} | {c[1]} | {wait.get(c[0], '')} | | {g[0]} | {g[1]} |")
    return "\n".join(out)


def write(out: Path, result: dict, rec: Recorder, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pngs = charts(rec, out)
    (out / "report.json").write_text(json.dumps({"result": result, "series": series(rec),
                                                 "samples": rec.samples}, indent=1))
    path = out / "report.md"
    path.write_text(markdown(result, pngs, command))
    return path
