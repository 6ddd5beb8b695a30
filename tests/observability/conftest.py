"""One `keel up` for the observability tests: the embedded stack on free ports in a temp
dir, with the accounts and settlement workers added through KEEL_EXTRA_PROCESSES while the
process registry does not run them itself. Stopped at the end of the session."""
from __future__ import annotations

import json
import os
import sys

import pytest

from infra.embedded import free_port
from tests.infra.test_up import Stack

MASTER_KEY = "observability-test-master-key-0123456789"


def _streams_extras(env: dict[str, str]) -> list[dict]:
    from infra.processes import all_processes
    from infra.settings import Settings

    registered = {s.name for s in all_processes(Settings.from_env(env))}
    extras = []
    for role in ("accounts", "settlement"):
        if role in registered:
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
    env = {"KEEL_GATEWAY_PORT": str(free_port()), "KEEL_GATEWAY_MASTER_KEY": MASTER_KEY,
           "KEEL_STREAMS_COMMIT_INTERVAL": "0.005", "KEEL_LOG_LEVEL": "WARNING",
           "KEEL_DATA_DIR": str(data_dir)}
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
