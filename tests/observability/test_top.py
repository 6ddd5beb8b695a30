"""`keel top`: pure figure arithmetic on synthetic scrapes, then one frame of the live
stack (conftest.py) while this test makes the gateway answer 404s."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from infra.commands.top import figures, metrics_endpoints, parse, quantile, render

KEEL = [sys.executable, "-m", "infra.cli"]


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    cumulative = {0.001: 0.0, 0.005: 50.0, 0.01: 100.0, float("inf"): 100.0}
    assert quantile(0.5, cumulative) == pytest.approx(0.005)
    assert quantile(0.99, cumulative) == pytest.approx(0.005 + 0.005 * 49 / 50)
    # In +Inf: the highest finite bound, as histogram_quantile answers.
    assert quantile(0.99, {0.1: 10.0, float("inf"): 20.0}) == pytest.approx(0.1)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None


BEFORE = """
# TYPE exchange_orders_processed_total counter
exchange_orders_processed_total{pair="BTCUSDT"} 100
exchange_orders_processed_total{pair="ETHUSDT"} 50
# TYPE exchange_order_latency_seconds histogram
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="0.001"} 10
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="0.01"} 10
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="+Inf"} 10
exchange_order_latency_seconds_count{pair="BTCUSDT",type="Place"} 10
exchange_order_latency_seconds_sum{pair="BTCUSDT",type="Place"} 0.005
# TYPE exchange_engine_consumer_lag gauge
exchange_engine_consumer_lag{partition="0"} 3
# TYPE keel_sink_dead_letters_total counter
keel_sink_dead_letters_total{sink="postgres",code="x"} 4
"""
AFTER = """
# TYPE exchange_orders_processed_total counter
exchange_orders_processed_total{pair="BTCUSDT"} 300
exchange_orders_processed_total{pair="ETHUSDT"} 50
# TYPE exchange_order_latency_seconds histogram
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="0.001"} 10
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="0.01"} 110
exchange_order_latency_seconds_bucket{pair="BTCUSDT",type="Place",le="+Inf"} 110
exchange_order_latency_seconds_count{pair="BTCUSDT",type="Place"} 110
exchange_order_latency_seconds_sum{pair="BTCUSDT",type="Place"} 0.5
# TYPE exchange_engine_consumer_lag gauge
exchange_engine_consumer_lag{partition="0"} 7
# TYPE keel_sink_dead_letters_total counter
keel_sink_dead_letters_total{sink="postgres",code="x"} 1
"""


def test_figures_are_rates_and_percentiles_of_the_interval():
    f = figures(parse(BEFORE, "engine"), parse(AFTER, "engine"), 2.0, {"sink": "refused"},
                {"engine": "u1", "sink": "u2"})
    assert f["orders_per_s"] == 100.0                   # (300 + 50 - 150) / 2 s
    # The interval's 100 observations all fell in (0.001, 0.01]: p50 halfway through it.
    assert f["engine_latency_ms"]["p50"] == pytest.approx(5.5)
    assert f["lag_records"] == {"engine p0": 7}
    assert f["errors"]["dead_letters_per_s"] == 0        # a reset counter never goes negative
    assert f["processes"] == {"engine": "up", "sink": "down: refused"}
    frame = render(f, "/data")
    assert "orders/s    100.0" in frame and "sink:DOWN" in frame


def test_a_scrape_can_keep_only_the_families_it_needs():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from infra.commands.top import scrape

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            body = AFTER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        full, errors = scrape({"engine": url})
        kept, _ = scrape({"engine": url}, only=("exchange_engine_consumer_lag",
                                                "keel_sink_dead_letters"))
    finally:
        server.shutdown()
        server.server_close()
    assert errors == {} and "exchange_orders_processed_total" in full
    assert set(kept) == {"exchange_engine_consumer_lag", "keel_sink_dead_letters_total"}
    assert kept["exchange_engine_consumer_lag"] == full["exchange_engine_consumer_lag"]


def test_endpoints_come_from_the_supervisors_http_health_checks():
    state = {"processes": {
        "kafka": {"health": {"kind": "kafka", "target": "127.0.0.1:9092"}},
        "gateway": {"health": {"kind": "http", "target": "http://127.0.0.1:8080/health"}},
        "engine": {"health": {"kind": "http", "target": "http://127.0.0.1:9410/metrics"}},
        "demo": {"health": None}}}
    assert metrics_endpoints(state) == {"engine": "http://127.0.0.1:9410/metrics",
                                        "gateway": "http://127.0.0.1:8080/metrics"}


def test_top_says_when_nothing_runs(tmp_path):
    import os
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path)}
    result = subprocess.run([*KEEL, "top", "--once"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "not running" in result.stderr


def _commit_a_group_offset(stack) -> None:
    """A group with a committed offset, whatever ran before on the stack: Keel's own
    groups appear only after their first commit, which an idle fresh stack has not made."""
    from confluent_kafka import Consumer, TopicPartition

    bootstrap = f"127.0.0.1:{stack.env['KEEL_EMBEDDED_KAFKA_PORT']}"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "obs-top-probe",
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition("keel.orders", 0, 0)], asynchronous=False)
    finally:
        consumer.close()


def test_top_once_shows_the_live_stack(keel_stack):
    base = f"http://127.0.0.1:{keel_stack.env['KEEL_GATEWAY_PORT']}"
    stop = threading.Event()

    def not_found():  # only this test makes the gateway answer 4xx
        while not stop.is_set():
            try:
                urllib.request.urlopen(base + "/api/v3/no-such-thing", timeout=2)
            except urllib.error.HTTPError:
                pass
            time.sleep(0.02)
    poker = threading.Thread(target=not_found, daemon=True)
    poker.start()
    _commit_a_group_offset(keel_stack)
    try:
        result = keel_stack.keel("top", "--once", "--json", "--interval", "1.5")
    finally:
        stop.set()
        poker.join()
    assert result.returncode == 0, result.stderr
    f = json.loads(result.stdout.strip().splitlines()[-1])
    assert f["processes"] and set(f["processes"].values()) == {"up"}, f["processes"]
    assert {"engine", "gateway"} <= set(f["processes"])
    assert f["rest_errors_per_s"]["4xx"] > 0
    assert any(k.startswith("engine p") for k in f["lag_records"])
    # Every consumer group's committed lag, read from Kafka (streams export no gauge).
    groups = {k for k in f["lag_records"] if k.startswith("group ")}
    assert "group obs-top-probe" in groups, f["lag_records"]
    text = keel_stack.keel("top", "--once", "--interval", "0.5")
    assert text.returncode == 0 and "orders/s" in text.stdout and "lag" in text.stdout
