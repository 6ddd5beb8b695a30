"""One `keel up` for the observability tests: the embedded stack on free ports in a temp
dir, with the accounts and settlement workers added through KEEL_EXTRA_PROCESSES if the
process registry does not run them itself. Stopped at the end of the session."""
from __future__ import annotations

import json
import os
import sys

import pytest

from infra.embedded import free_port, free_ports
from tests.infra.test_up import METRICS_SPAN, Stack

MASTER_KEY = "observability-test-master-key-0123456789"


def _metrics_base() -> int:
    """A base whose derived ports (engine +10.., streams +30.., sinks +40.., standby +60..)
    are free too: a free base alone can put the engine on someone else's port."""
    return free_ports(METRICS_SPAN)


def _streams_extras(env: dict[str, str]) -> list[dict]:
    from infra.processes import all_processes
    from infra.settings import Settings

    registered = {s.name for s in all_processes(Settings.from_env(env))}
    extras = []
    for role in ("accounts", "settlement"):
        if any(name.split("-")[-1] == role for name in registered):   # streams-accounts
            continue
        port = free_port()
        extras.append({"name": role, "depends_on": ["kafka"],
                       "argv": [sys.executable, "-m", "infra.cli", "streams", role,
                                "--metrics-port", str(port)],
                       "health_url": f"http://127.0.0.1:{port}/metrics"})
    return extras


@pytest.fixture(scope="session")
def keel_stack(tmp_path_factory) -> Stack:
    data_dir = tmp_path_factory.mktemp("keel-obs")
    env = {"KEEL_GATEWAY_PORT": str(free_port()), "KEEL_METRICS_PORT_BASE": str(_metrics_base()), "KEEL_GATEWAY_MASTER_KEY": MASTER_KEY,
           "KEEL_STREAMS_COMMIT_INTERVAL": "0.005", "KEEL_LOG_LEVEL": "WARNING",
           "KEEL_DATA_DIR": str(data_dir),
           # Load from one loopback IP: the per-IP and VIP limits must allow it (standard
           # keys keep the default, so the bots' probing meets its limit). A slow shared
           # machine must not turn into order timeouts: tests never depend on speed.
           "KEEL_GATEWAY_IP_LIMIT": "1000000000", "KEEL_GATEWAY_VIP_LIMIT": "1000000000",
           "KEEL_GATEWAY_ORDER_TIMEOUT_MS": "60000"}
    probe = {**os.environ, **env}
    for name in ("KEEL_KAFKA_BOOTSTRAP", "KEEL_POSTGRES_URL", "KEEL_CLICKHOUSE_URL"):
        probe.pop(name, None)
    env["KEEL_EXTRA_PROCESSES"] = json.dumps(_streams_extras(probe))
    running = Stack(data_dir, **env)
    try:
        running.wait_for("every component healthy", timeout=180)
        yield running
    finally:
        running.close()
