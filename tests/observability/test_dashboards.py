"""Grafana dashboards: provisioned from infra/grafana/dashboards through the compose
mount, on the provisioned Prometheus datasource, and every query names a metric that a
LIVE scrape of the running processes (keel up, see conftest.py) returns."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from infra.commands.top import metrics_endpoints
from tests.observability.catalogue import SUFFIXES
from tests.observability.promql import balanced, metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
PROVISIONING = ROOT / "infra" / "grafana" / "provisioning"
COMPOSE = ROOT / "docker-compose.kafka.yml"
STANDARD = {"up"}          # written by Prometheus itself for every target
WANTED = {                 # dashboard -> panel titles the issue asks for
    "operations": {"Processes up", "Orders applied /s", "Engine lag (records)",
                   "Sink lag (records)", "Dead letters /s (keel.dlq)", "REST 5xx ratio"},
    "trading": {"Depth, top levels (lots)", "Book imbalance", "Spread and fill rate",
                "Engine latency (consume to commit)", "REST order latency"},
    "executive": {"Orders, last 24 h", "Order volume by pair (orders/h)",
                  "Connected clients"},
}


def boards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def queries(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable."""
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{board['uid']} / {panel['title']} / {target['refId']}",
                        target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = query.removeprefix("label_values(").rsplit(",", 1)[0]
        out.append((f"{board['uid']} / ${var['name']}", inner))
    return out


def test_dashboards_are_the_three_asked_for_with_their_panels():
    found = boards()
    assert set(found) == set(WANTED)
    uids = [b["uid"] for b in found.values()]
    assert len(set(uids)) == len(uids)
    for name, titles in WANTED.items():
        have = {p["title"] for p in found[name]["panels"]}
        assert titles <= have, f"{name} misses {titles - have}"
        for panel in found[name]["panels"]:
            if panel["type"] in ("row", "text"):
                continue
            assert panel.get("description"), f"{name}/{panel['title']} says what it shows"


def test_panels_use_the_provisioned_datasource():
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    uids = {d["uid"] for f in files for d in yaml.safe_load(f.read_text())["datasources"]}
    for board in boards().values():
        for panel in board["panels"]:
            if "datasource" in panel:
                assert panel["datasource"]["uid"] in uids, panel["title"]
                for t in panel["targets"]:
                    assert t["datasource"]["uid"] in uids


def test_compose_mounts_the_dashboards_where_the_provider_reads_them():
    (provider,) = yaml.safe_load(
        (PROVISIONING / "dashboards" / "keel.yml").read_text())["providers"]
    assert provider["type"] == "file"
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mount = f"./infra/grafana/dashboards:{provider['options']['path']}:ro"
    assert mount in grafana["volumes"]
    # The provisioning dir (datasources + dashboards) is mounted as a whole.
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_every_query_balances():
    for board in boards().values():
        for where, expr in queries(board):
            assert balanced(expr), where
            assert metric_names(expr), f"{where} selects no metric"


def live_series(endpoints: dict[str, str]) -> set[str]:
    """Every series name the processes serve now, and for families with no sample yet
    (a labelled metric nobody has touched) the names their type implies."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for url in endpoints.values():
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            names.update(s.name for s in family.samples)
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


@pytest.fixture(scope="module")
def live(keel_stack) -> set[str]:
    endpoints = metrics_endpoints(keel_stack.state())
    # The processes whose metrics the dashboards chart must all be in the scrape.
    roles = {name.split("-")[-1] for name in endpoints}              # streams-accounts
    assert {"engine", "gateway", "postgres", "clickhouse", "accounts",
            "settlement"} <= roles, endpoints
    return live_series(endpoints)


def test_every_dashboard_query_names_a_metric_the_live_processes_export(live):
    assert "exchange_orders_processed_total" in live       # the scrape really happened
    missing = {}
    for board in boards().values():
        for where, expr in queries(board):
            unknown = metric_names(expr) - live - STANDARD
            if unknown:
                missing[where] = sorted(unknown)
    assert not missing, f"queries on metrics no process exports: {missing}"


def test_the_live_check_can_fail(live):
    """The comparison above is not vacuous: a misspelt metric is caught."""
    assert metric_names("rate(exchange_orders_procesed_total[1m])") - live - STANDARD
