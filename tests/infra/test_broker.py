"""The embedded broker's process environment (infra/embedded/kafka.py)."""
from __future__ import annotations

import subprocess
import time

from infra.embedded import free_port, stop_child
from infra.embedded.kafka import broker_env, spawn
from infra.health import HealthCheck


def _healthy_then_stopped(proc: subprocess.Popen, port: int, log) -> str:
    """Wait until the broker answers, stop it, and return what it logged."""
    try:
        deadline = time.monotonic() + 60
        while not (result := HealthCheck("kafka", f"127.0.0.1:{port}").run(timeout=1.0)).ok:
            assert proc.poll() is None and time.monotonic() < deadline, result.detail
            time.sleep(0.1)
    finally:
        stop_child(proc, timeout=15)
    return log.read_text(errors="replace")


def test_broker_env_pins_tansu_log_filter_and_keeps_the_rest():
    env = broker_env({"RUST_LOG": "debug", "PATH": "/bin", "KEEL_X": "1"})
    assert env == {"RUST_LOG": "error", "PATH": "/bin", "KEEL_X": "1"}


def test_a_rust_log_in_our_shell_does_not_reach_the_broker(tmp_path, monkeypatch):
    # With RUST_LOG=info tansu logs every span (thousands of lines for one metadata call).
    monkeypatch.setenv("RUST_LOG", "info")
    port = free_port()
    log = tmp_path / "kafka.log"
    proc = spawn(port, log)
    text = _healthy_then_stopped(proc, port, log)
    assert "listening on" in text          # the log was captured at all
    assert "INFO" not in text and "DEBUG" not in text


def test_keel_services_kafka_execs_the_broker_with_the_pinned_filter(tmp_path):
    # `keel up` runs the broker through `keel services kafka`, which execs tansu.
    import os
    import sys

    port = free_port()
    log = tmp_path / "services-kafka.log"
    env = {**os.environ, "RUST_LOG": "info", "KEEL_EMBEDDED_KAFKA_PORT": str(port),
           "KEEL_DATA_DIR": str(tmp_path / "keel")}
    env.pop("KEEL_KAFKA_BOOTSTRAP", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "services", "kafka"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    text = _healthy_then_stopped(proc, port, log)
    assert "listening on" in text
    assert "INFO" not in text and "DEBUG" not in text
