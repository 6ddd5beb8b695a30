"""`keel loadgen`: the population model, outcome classification, ramp verdicts and the
report writer on their own, then short real runs against the live stack (conftest.py):
a baseline that must finish with zero errors and a report, and a two-step ramp whose
last line is the benchmark's JSON."""
from __future__ import annotations

import json

import pytest

from infra.loadgen.population import headcount, order_shares, phases, population, user_shares
from infra.loadgen.record import Recorder, classify, percentile
from infra.loadgen.report import write
from infra.loadgen.runner import Config, check_host
from infra.loadgen.verdict import (
    Limits,
    ceiling_text,
    cpu_ceiling,
    cpu_ms_per_order,
    describe,
    judge,
    step_broken,
    verdict,
)


def test_population_follows_the_seed_mix():
    plan = population(100, 400.0)
    assert headcount(100) == {"mm": 5, "retail": 80, "bot": 15}
    assert user_shares(plan) == {"mm": 0.05, "retail": 0.80, "bot": 0.15}
    shares = order_shares(plan)
    assert shares["mm"] == pytest.approx(0.60) and shares["retail"] == pytest.approx(0.20)
    mm = [t for t in plan if t.kind == "mm"]
    assert all(10 <= t.orders_per_s <= 50 for t in mm)          # 240/s over 5 makers
    assert all(t.public_streams > 0 for t in plan if t.kind == "retail")
    assert all(0 < t.balance_checks_per_s <= 0.2 for t in plan if t.kind == "retail")
    # Small runs keep one of each kind.
    assert headcount(3) == {"mm": 1, "retail": 1, "bot": 1}
    with pytest.raises(ValueError):
        headcount(2)


def test_mode_shapes():
    assert [p.multiplier for p in phases("ramp", 40, 10)] == [1, 2, 4, 8]
    assert [p.multiplier for p in phases("spike", 30)] == [1, 10, 1]
    assert [(p.seconds, p.multiplier) for p in phases("soak", 60)] == [(60, 1)]
    with pytest.raises(ValueError):
        phases("storm", 10)


def test_outcomes():
    assert classify(200, {}) == ("ok", "")
    limited = {"code": -1003, "msg": "Too many requests; current limit of API key request"}
    assert classify(429, limited, probing=True)[0] == "refused"
    assert classify(429, limited)[0] == "error"                       # nobody was probing
    ip = {"code": -1003, "msg": "Too many requests; current limit of IP request weight"}
    assert classify(429, ip, probing=True)[0] == "error"              # stack set too low
    assert classify(400, {"code": -2011, "msg": "Unknown order sent."},
                    cancelling=True)[0] == "rejected"
    assert classify(400, {"code": -2011, "msg": "Unknown order sent."})[0] == "error"
    assert classify(400, {"code": -2010, "msg": "The order book has no liquidity"})[0] \
        == "rejected"
    assert classify(400, {"code": -2010, "msg": "Account has insufficient balance"})[0] \
        == "error"
    assert classify(503, {"code": -1007, "msg": "Timeout"})[0] == "error"


def test_only_loopback_unless_allowed():
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:8080"):
        check_host(url, ())
    with pytest.raises(ValueError, match="not loopback"):
        check_host("http://exchange.example.com", ())
    check_host("http://exchange.example.com", ("exchange.example.com",))


def _recorded(latency_ms: float, errors: int = 0) -> Recorder:
    rec = Recorder(0.0)
    for sec in range(4):
        rec.target(sec, 100.0, "x1")
        for _ in range(100):
            rec.sent(sec + 0.4)
            rec.request(sec + 0.5, "ok", order=True, ack_ms=latency_ms / 2)
            rec.fill(sec + 0.5, latency_ms)
        for _ in range(errors):
            rec.request(sec + 0.5, "error", "503 -1007")
    rec.samples = [{"t": s, "phase": "x1", "lag": {"engine": 0.0}, "rss_mb": {"engine": 50.0},
                    "cpu_pct": {"engine": 20.0, "loadgen": 5.0}, "ws_connections": 3}
                   for s in range(4)]
    return rec


def test_ramp_step_verdicts():
    from infra.loadgen.population import Phase

    step = (Phase("x1", 4, 1.0), 0, 4)
    assert step_broken(Limits(), _recorded(10.0), step) is None
    assert step_broken(Limits(), _recorded(80.0), step) == "p99_order_to_fill"
    assert step_broken(Limits(), _recorded(10.0, errors=5), step) == "error_rate"
    j = judge(Limits(), _recorded(10.0, errors=5), step)
    assert j["errors"] == ["503 -1007 x20"] and "errors mostly: 503 -1007 x20" in describe(j)
    assert "KEEL_GATEWAY_IP_LIMIT" not in describe(j)
    limited = _recorded(10.0)
    for _ in range(30):
        limited.request(1.5, "error", "POST /api/v3/order: 429 -1003 Too many requests")
    j = judge(Limits(), limited, step)
    assert j["broke"] == "error_rate" and "KEEL_GATEWAY_IP_LIMIT" in describe(j)
    assert "KEEL_GATEWAY_STANDARD_LIMIT" in describe(j)     # the per-key limit of most bots
    slow = _recorded(10.0)
    for s in slow.seconds:
        s.sent *= 2                                    # sent twice what was answered
    assert step_broken(Limits(), slow, step) == "throughput"
    for s in slow.samples:
        s["in_flight"] = 50                            # ... but answers only trail sends:
    assert step_broken(Limits(), slow, step) is None   # the backlog holds level
    for i, s in enumerate(slow.samples):
        s["in_flight"] = 50 + 100 * i                  # a backlog growing by 100 a second
    assert step_broken(Limits(), slow, step) == "throughput"
    starved = _recorded(10.0)
    for s in starved.seconds:
        s.target_orders_per_s = 200.0                  # asked twice what could be sent
    j = judge(Limits(), starved, step)
    assert j["broke"] == "loadgen" and j["value"] == 100.0 and j["threshold"] == 180.0
    for s in starved.seconds:
        s.held = 100                                   # ... but a bot was told to back off
    assert step_broken(Limits(), starved, step) is None
    lagging = _recorded(10.0)
    lagging.samples[-1]["lag"]["engine"] = 10_000.0    # one sample: a commit's sawtooth
    assert step_broken(Limits(), lagging, step) is None
    for s in lagging.samples[-3:]:
        s["lag"]["engine"] = 10_000.0                  # held: a backlog
    j = judge(Limits(), lagging, step)
    assert (j["broke"], j["stage"], j["value"]) == ("lag", "engine", 10_000.0)
    assert "lag of engine" in describe(j)
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3


def test_cpu_per_order_and_the_ceiling_it_implies():
    # 100 orders/s with the gateway at 30% and the broker at 20% of a core: 3 + 2 ms
    assert cpu_ms_per_order({"gateway": 30.0, "kafka": 20.0}, 100.0) == {
        "gateway": 3.0, "kafka": 2.0, "total": 5.0}
    assert cpu_ms_per_order({"gateway": 30.0}, 0.0) == {}
    # 40% of a core idle, 0.5 ms of CPU per extra order: 2 cores full at (200-40)/0.05
    steps = [{"orders_per_s": r, "cpu_pct": {"a": 20 + 0.03 * r, "b": 20 + 0.02 * r}}
             for r in (100.0, 200.0, 400.0)]
    c = cpu_ceiling(steps, cores=2)
    assert c == {"cores": 2, "saturated": False, "cpu_ms_per_extra_order": 0.5,
                 "idle_cpu_pct": 40.0, "orders_per_s": 3200.0}
    assert "estimate" in ceiling_text(c)
    assert cpu_ceiling(steps[:1], cores=2) is None      # one rate: no slope to draw
    # the cores were full: the most a full machine carried is the answer, not a line
    # through steps whose CPU could not grow (the fit would put the ceiling far above)
    full = [{"orders_per_s": 50.0, "cpu_pct": {"a": 140.0}},
            {"orders_per_s": 200.0, "cpu_pct": {"a": 172.0}},
            {"orders_per_s": 368.0, "cpu_pct": {"a": 178.0}}]
    c = cpu_ceiling(full, cores=2)
    assert c == {"cores": 2, "saturated": True, "cpu_pct": 178.0, "cpu_ms_per_order": 4.837,
                 "orders_per_s": 368.0}
    assert "were full" in ceiling_text(c)


def test_report_is_markdown_with_charts(tmp_path):
    rec = _recorded(12.0)
    cfg = Config("baseline", "http://127.0.0.1:1", users=10, rate=100.0)
    from infra.loadgen.population import Phase
    result = verdict(cfg, rec, [(Phase("baseline", 4, 1.0), 0, 4)], None, 1.0, {}, 400)
    assert result["orders"] == 400 and result["requests"]["error"] == 0
    path = write(tmp_path, result, rec, "keel loadgen baseline")
    text = path.read_text()
    assert "| orders answered | 400 (100.0 /s) |" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    pytest.importorskip("matplotlib")
    assert pngs == ["cpu.png", "errors.png", "lag.png", "latency_ack.png", "latency_fill.png",
                    "memory.png", "throughput.png"]
    for name in pngs:
        assert f"![{name}]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_against_the_live_stack_has_no_errors(keel_stack, tmp_path):
    out = tmp_path / "report"
    result = keel_stack.keel("loadgen", "baseline", "--users", "10", "--rate", "20",
                             "--seconds", "6", "--report", str(out), "--json",
                             "--request-timeout", "90", "--recv-window", "60000",
                             timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["requests"]["error"] == 0, r["errors"]
    assert r["orders"] > 0 and r["requests"]["ok"] > 0
    assert r["fills"] > 0, "no fill reached a user's WebSocket"
    assert r["ws"].get("ws_messages", 0) > 0
    text = (out / "report.md").read_text()
    assert "| error rate | 0.0000% |" in text
    assert (out / "throughput.png").exists() and (out / "report.json").exists()
    # The stack's metrics were sampled from the running processes.
    samples = json.loads((out / "report.json").read_text())["samples"]
    assert samples and "engine" in samples[-1]["lag"] and samples[-1]["rss_mb"]
    assert any(k.startswith("group ") for k in samples[-1]["lag"])
    # CPU per process (and the load generator's own), and each stage's latency.
    assert "loadgen" in samples[-1]["cpu_pct"] and "gateway" in samples[-1]["cpu_pct"]
    stages = r["phases"][0]["stages_ms"]
    assert {"requests", "orders", "events", "committed"} <= set(stages), stages
    assert stages["requests"]["p50"] <= stages["committed"]["p99"]
    assert r["loadgen_cpu_us_per_request"] > 0 and r["loadgen_connections"] >= 1
    assert "## Latency per stage" in text


def test_ramp_prints_the_benchmark_line(keel_stack):
    result = keel_stack.keel("loadgen", "ramp", "--users", "10", "--rate", "10",
                             "--step-seconds", "3", "--seconds", "6", "--json",
                             "--request-timeout", "90", "--recv-window", "60000",
                             timeout=400)
    assert result.returncode in (0, 1), result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"max_sustained_orders_per_s", "p99_order_to_fill_ms", "breaking_point"} <= set(last)
    assert isinstance(last["max_sustained_orders_per_s"], float)
    assert [p["multiplier"] for p in last["phases"]][0] == 1.0
    # what each order cost the machine, every process of the stack and the loadgen in it
    first = last["phases"][0]
    if first["orders_per_s"]:
        per_order = first["cpu_ms_per_order"]
        assert per_order["total"] > 0 and "gateway" in per_order and "loadgen" in per_order
    assert "cpu_ceiling" in last


def test_spike_recovery_waits_for_the_backlog_to_drain():
    from infra.loadgen.population import Phase
    from infra.loadgen.verdict import recovery_seconds

    rec = Recorder(0.0)
    answered = [10, 10, 100, 100, 60, 30, 10, 10]        # before x2, spike x2, after x4
    for sec, n in enumerate(answered):
        rec.target(sec, 100.0 if sec in (2, 3) else 10.0, "x")
        for _ in range(n):
            rec.request(sec + 0.5, "ok", order=True)
            rec.fill(sec + 0.5, 20.0)
    played = [(Phase("before", 2, 1), 0, 2), (Phase("spike", 2, 10), 2, 4),
              (Phase("after", 4, 1), 4, 8)]
    assert recovery_seconds(rec, played) == 2.0           # second 6: 10 answered, target 10


def test_without_a_stack_it_says_so_in_one_line(tmp_path):
    """No `keel up` on the data dir and nothing at the gateway's port: a one-line error
    and a non-zero exit, not a traceback (it was psycopg's, after a minute of retries)."""
    import os
    import subprocess
    import sys

    from infra.embedded import free_port

    env = os.environ | {"KEEL_DATA_DIR": str(tmp_path), "KEEL_GATEWAY_PORT": str(free_port()),
                        "KEEL_EMBEDDED_POSTGRES_PORT": str(free_port()),
                        "KEEL_EMBEDDED_KAFKA_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "infra.cli", "loadgen", "baseline",
                             "--seconds", "1", "--no-progress", "--json"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keel loadgen:"), result.stderr
    assert "no gateway answers" in err[0] and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_an_unreachable_user_table_is_one_line_after_the_retries():
    import psycopg

    from infra.loadgen.runner import _with_retry

    def refused():
        raise psycopg.OperationalError('connection failed: connection to server at '
                                       '"127.0.0.1", port 1 failed: Connection refused\n'
                                       '\tIs the server running on that host?')

    with pytest.raises(RuntimeError) as caught:
        _with_retry(refused, timeout=0)
    message = str(caught.value)
    assert "\n" not in message and "PostgreSQL" in message and "port 1 failed" in message
