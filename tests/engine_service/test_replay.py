"""`keel replay --compare` confirms what the engine published, and catches a difference."""
from __future__ import annotations

import os
import subprocess
import sys

from engine.service.tools import clean_run, produce_commands
from engine.workload import operations, to_commands

from .checks import published_events
from .conftest import MARKETS, REPO, wait_for

ORDERS = 30_000


def _replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--no-progress", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_replay_matches_the_published_log_and_reports_a_drift(engine_env, spawn_engine):
    env = engine_env
    env.env["KEEL_ENGINE_SNAPSHOT_EVERY"] = "7000"
    commands = list(to_commands(operations(ORDERS, seed=17), "BTCUSDT"))
    expected, final_hash = clean_run(env.markets, 0, commands, env.codec)
    produce_commands(env.settings, env.codec, 0, commands)
    proc = spawn_engine("--partitions", "0")
    wait_for(lambda: len(published_events(env, 0)) >= len(expected), 120, "every event")
    proc.terminate()
    assert proc.wait(30) == 0

    whole = _replay(env.env, "--partition", "0", "--compare")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "MATCH" in whole.stdout and final_hash in whole.stdout

    middle = _replay(env.env, "--partition", "0", "--from", "10000", "--to", "25000",
                     "--compare")
    assert middle.returncode == 0, middle.stdout + middle.stderr
    loaded = int(middle.stdout.split("from snapshot at ")[1].split(")")[0])
    assert 0 < loaded <= 10_000         # started from a snapshot, not from offset 0
    checked = int(middle.stdout.split("snapshots checked: ")[1].split()[0])
    assert checked >= 1                 # a snapshot every >= 7000 records: one in 10000..25000

    # Same input, different taker fee: the first Trade differs and replay says so.
    drifted = env.dir / "drifted.toml"
    drifted.write_text(MARKETS.replace('taker_fee = "0.002"', 'taker_fee = "0.003"'))
    bad = _replay({**env.env, "KEEL_MARKETS_FILE": str(drifted)}, "--partition", "0",
                  "--compare")
    assert bad.returncode == 1
    assert "MISMATCH" in bad.stdout and "Trade(" in bad.stdout
