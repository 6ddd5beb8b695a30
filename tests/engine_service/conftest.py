"""Fixtures for the engine service against the session's real tansu broker.

Each test gets its own topic prefix (so topics never collide), a two-pair markets file
(BTCUSDT on partition 0, ETHUSDT on 1, no minimum notional so the standard workload
trades), and a factory that runs `keel engine` as a child process and reaps it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.markets import MarketsConfig, load_markets
from infra.settings import Settings
from schemas.codec import Codec

REPO = Path(__file__).resolve().parents[2]

MARKETS = """
allow_shared_partitions = false
fee_account = 0
[assets]
BTC = { decimals = 8 }
ETH = { decimals = 8 }
USDT = { decimals = 8 }
[[markets]]
pair = "BTCUSDT"
base = "BTC"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.001"
min_notional = "0"
maker_fee = "0.001"
taker_fee = "0.002"
partition = 0
[[markets]]
pair = "ETHUSDT"
base = "ETH"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.001"
min_notional = "0"
maker_fee = "0.001"
taker_fee = "0.002"
partition = 1
"""


@dataclass
class EngineEnv:
    settings: Settings
    env: dict[str, str]
    markets: MarketsConfig
    codec: Codec
    dir: Path


def make_env(bootstrap: str, directory: Path, **extra: str) -> EngineEnv:
    from engine.service.tools import ensure_engine_topics

    markets_file = directory / "markets.toml"
    markets_file.write_text(MARKETS)
    env = {
        "KEEL_KAFKA_BOOTSTRAP": bootstrap,
        "KEEL_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "KEEL_MARKETS_FILE": str(markets_file),
        "KEEL_DATA_DIR": str(directory / "keel"),
        "KEEL_LOG_LEVEL": "INFO",
        "KEEL_ENGINE_TAKEOVER_MS": "600",
        **extra,
    }
    settings = Settings.from_env(env)
    markets = load_markets(markets_file)
    ensure_engine_topics(settings, markets)
    return EngineEnv(settings, env, markets, Codec(), directory)


@pytest.fixture
def engine_env(kafka_bootstrap: str, tmp_path: Path) -> EngineEnv:
    return make_env(kafka_bootstrap, tmp_path, KEEL_ENGINE_SNAPSHOT_EVERY="20000")


@pytest.fixture
def spawn_engine(engine_env: EngineEnv):
    procs: list[subprocess.Popen] = []

    def spawn(*args: str, env: EngineEnv | None = None) -> subprocess.Popen:
        e = env or engine_env
        log = open(e.dir / f"engine-{len(procs)}.log", "wb")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "engine", "--metrics-port", "0", *args],
            cwd=REPO, env={**os.environ, **e.env}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        proc.log_path = e.dir / f"engine-{len(procs)}.log"
        procs.append(proc)
        return proc

    spawn.procs = procs
    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    """Poll until predicate() is truthy (its value is returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def log_of(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")
