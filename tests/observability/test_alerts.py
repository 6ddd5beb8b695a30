"""infra/prometheus/alerts.yml: every rule parses, is tiered, names only metrics Keel's
code registers (or standard exporters' / a declared pending one), passes
`promtool check rules`, and the P1/P2 rules fire (and stay silent) on synthetic series
under `promtool test rules`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.catalogue import EXTERNAL, families, sample_names
from tests.observability.promql import balanced, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.kafka.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
TIERS = {"keel-p1": ("P1", "page"), "keel-p2": ("P2", "ticket"), "keel-p3": ("P3", "info")}
SEED_ALERTS = {  # the list, by tier
    "P1": {"KeelEngineDown", "KeelNoEventsForPartition", "KeelAccountsDown",
           "KeelDeadLettersGrowingFast"},
    "P2": {"KeelEngineLagHigh", "KeelApiErrorRateHigh", "KeelSinkLagHigh"},
    "P3": {"KeelDiskFillingUp", "KeelCertificateExpiresSoon", "KeelGatewayCacheHitRatioLow"},
}


def rules() -> list[tuple[str, dict]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"]]


def test_promql_reader_finds_names_and_ignores_labels_functions_and_ranges():
    expr = ('sum by (sink, le) (rate(keel_sink_event_lag_seconds_bucket{sink=~"a|b"}[5m])) '
            '/ on (job) group_left up offset 1m > bool 3')
    assert metric_names(expr) == {"keel_sink_event_lag_seconds_bucket", "up"}
    assert balanced(expr)
    assert not balanced("sum(rate(x[5m])")
    assert not balanced("sum(rate(x[5m)))")
    assert balanced('x{a="(("}')


def test_every_rule_is_tiered_and_documented():
    seen = set()
    for group, rule in rules():
        tier, severity = TIERS[group]
        name = rule["alert"]
        assert name not in seen, f"duplicate alert {name}"
        seen.add(name)
        assert rule["labels"]["severity"] == severity, name
        assert rule["labels"]["tier"] == tier, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key}"
    for tier, names in SEED_ALERTS.items():
        group = {g: r["alert"] for g, r in rules()}
        have = {r["alert"] for g, r in rules() if TIERS[g][0] == tier}
        assert names <= have, f"{tier} misses {names - have} ({group})"


def test_every_expression_balances_and_names_only_known_metrics():
    known = sample_names() | EXTERNAL
    for _group, rule in rules():
        expr = rule["expr"]
        assert balanced(expr), rule["alert"]
        names = metric_names(expr)
        assert names, f"{rule['alert']} selects no metric"
        pending = set(rule["labels"].get("pending_metric", "").split(","))
        unknown = {n for n in names if n not in known
                   and not any(n.startswith(p) for p in pending if p)}
        assert not unknown, f"{rule['alert']} names metrics nobody exports: {unknown}"


def test_pending_metrics_are_declared_in_the_catalogue_and_really_absent():
    doc = METRICS_DOC.read_text()
    exported = sample_names()
    for _group, rule in rules():
        for name in filter(None, rule["labels"].get("pending_metric", "").split(",")):
            assert name in doc, f"{name} is not listed in docs/metrics.md"
            # When someone exports it, the label must go and the rule count as live.
            assert not any(s.startswith(name) for s in exported), \
                f"{name} is exported now: drop pending_metric from {rule['alert']}"


def test_catalogue_lists_every_family_the_code_registers():
    doc = METRICS_DOC.read_text()
    for name, kind in families().items():
        shown = name + "_total" if kind == "counter" else name
        for role in ("accounts", "settlement", "marketdata"):
            shown = shown.replace(f"keel_{role}_", "keel_ROLE_")
        assert f"`{shown}`" in doc, f"docs/metrics.md does not list {shown} ({kind})"
    for name in EXTERNAL:
        assert f"`{name}`" in doc


def test_prometheus_loads_the_rules_and_compose_mounts_them():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    prom = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    mounts = prom["volumes"]
    assert "./infra/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    config_mount = "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert config_mount in mounts  # same directory, so the relative rule path resolves


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed: `promtool check rules` did NOT run "
                    "(the YAML/PromQL checks above still ran)")
    return tool


def test_promtool_accepts_the_rules_and_the_config():
    tool = _promtool()
    result = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    result = subprocess.run([tool, "check", "config", PROMETHEUS.name], cwd=PROMETHEUS.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    tool = _promtool()
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("== 0\n", "== \n", 1))
    result = subprocess.run([tool, "check", "rules", str(broken)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0


ENGINE = 'instance="engine:9400", job="engine"'
UNIT_TESTS = [
    {"interval": "1m",  # engine stops answering at minute 2; accounts stays up
     "input_series": [
         {"series": f"up{{{ENGINE}}}", "values": "1 1 0 0 0 0 0 0"},
         {"series": 'up{instance="accounts:9400", job="accounts"}', "values": "1x8"}],
     "alert_rule_test": [
         {"eval_time": "1m", "alertname": "KeelEngineDown", "exp_alerts": []},
         {"eval_time": "5m", "alertname": "KeelEngineDown",
          "exp_alerts": [{"exp_labels": {"severity": "page", "tier": "P1", "job": "engine",
                                         "instance": "engine:9400"}}]},
         {"eval_time": "5m", "alertname": "KeelAccountsDown", "exp_alerts": []}]},
    {"interval": "1m",  # partition 0 has 5 unread orders and nothing is applied; 1 is idle
     "input_series": [
         {"series": f'exchange_engine_consumer_lag{{{ENGINE}, partition="0"}}',
          "values": "5x12"},
         {"series": f'exchange_engine_consumer_lag{{{ENGINE}, partition="1"}}',
          "values": "0x12"},
         {"series": f'exchange_orders_processed_total{{{ENGINE}, pair="BTCUSDT"}}',
          "values": "100x12"}],
     "alert_rule_test": [
         {"eval_time": "10m", "alertname": "KeelNoEventsForPartition",
          "exp_alerts": [{"exp_labels": {"severity": "page", "tier": "P1",
                                         "instance": "engine:9400", "partition": "0"}}]},
         {"eval_time": "10m", "alertname": "KeelEngineLagHigh", "exp_alerts": []}]},
    {"interval": "1m",  # same lag, but the engine is applying orders: busy, not stuck
     "input_series": [
         {"series": f'exchange_engine_consumer_lag{{{ENGINE}, partition="0"}}',
          "values": "5x12"},
         {"series": f'exchange_orders_processed_total{{{ENGINE}, pair="BTCUSDT"}}',
          "values": "0+600x12"}],
     "alert_rule_test": [
         {"eval_time": "10m", "alertname": "KeelNoEventsForPartition", "exp_alerts": []}]},
    {"interval": "1m",  # a sink dead-letters 2 records/s; the engine 0.5/s; 5% of REST is 5xx
     "input_series": [
         {"series": 'keel_sink_dead_letters_total{sink="postgres", code="-9001"}',
          "values": "0+120x15"},
         {"series": f'exchange_engine_dead_letters_total{{{ENGINE}, partition="0", code="x"}}',
          "values": "0+30x15"},
         {"series": 'exchange_http_responses_total{route="/api/v3/order", status="200"}',
          "values": "0+6000x15"},
         {"series": 'exchange_http_responses_total{route="/api/v3/order", status="503"}',
          "values": "0+300x15"}],
     "alert_rule_test": [
         {"eval_time": "12m", "alertname": "KeelDeadLettersGrowingFast",
          "exp_alerts": [{"exp_labels": {"severity": "page", "tier": "P1"}}]},
         {"eval_time": "12m", "alertname": "KeelApiErrorRateHigh",
          "exp_alerts": [{"exp_labels": {"severity": "ticket", "tier": "P2"}}]}]},
    {"interval": "1m",  # 0.5 dead letters/s and 0.5% errors: below both thresholds
     "input_series": [
         {"series": f'exchange_engine_dead_letters_total{{{ENGINE}, partition="0", code="x"}}',
          "values": "0+30x15"},
         {"series": 'exchange_http_responses_total{route="/api/v3/order", status="200"}',
          "values": "0+6000x15"},
         {"series": 'exchange_http_responses_total{route="/api/v3/order", status="500"}',
          "values": "0+30x15"}],
     "alert_rule_test": [
         {"eval_time": "12m", "alertname": "KeelDeadLettersGrowingFast", "exp_alerts": []},
         {"eval_time": "12m", "alertname": "KeelApiErrorRateHigh", "exp_alerts": []}]},
]


def test_rules_fire_on_synthetic_series(tmp_path):
    """promtool compares annotations too; the runbooks are long prose, so the unit test
    runs on a copy without them: what is tested is expr, for and labels."""
    tool = _promtool()
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}))
    result = subprocess.run([tool, "test", "rules", "test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
