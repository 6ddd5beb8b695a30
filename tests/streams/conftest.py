"""Fixtures for streams tests on the real embedded broker: topics under a fresh prefix,
workers as real `keel streams ROLE` subprocesses, a producer and read_committed readers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS, Settings
from schemas.codec import Codec
from streams.keys import user_key, user_partition

USER_PARTITIONS = 4
WAIT = 120.0                      # a safety net for a stuck run, never a speed assertion


@pytest.fixture
def stream_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    from infra import topics
    from infra.kafka import admin_client

    settings = Settings(data_dir=tmp_path / "keel", kafka_bootstrap=kafka_bootstrap,
                        topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
                        user_partitions=USER_PARTITIONS, log_level="INFO")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, load_markets(DEFAULT_MARKETS)))
    assert all(o.ok for o in outcomes), outcomes
    return settings


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "KEEL_KAFKA_BOOTSTRAP": settings.bootstrap,
            "KEEL_TOPIC_PREFIX": settings.topic_prefix, "KEEL_DATA_DIR": str(settings.data_dir),
            "KEEL_USER_PARTITIONS": str(settings.user_partitions),
            "KEEL_LOG_LEVEL": settings.log_level, **extra}


class Workers:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.stopped: set[int] = set()

    def start(self, role: str, **extra: str) -> subprocess.Popen:
        return self.keel(role, "streams", role, "--metrics-port", "0", **extra)

    def start_engine(self, **extra: str) -> subprocess.Popen:
        return self.keel("engine", "engine", "--partitions", "all", "--metrics-port", "0",
                         **extra)

    def keel(self, name: str, *args: str, **extra: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args],
            env=worker_env(self.settings, **extra), stdout=log, stderr=subprocess.STDOUT,
            process_group=0)
        log.close()
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """Fail at once, with the logs, when a worker died on its own."""
        for proc in self.procs:
            if proc.pid not in self.stopped and proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{self.logs()}")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        self.stopped.add(proc.pid)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def workers(stream_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(stream_settings, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


class Client:
    """Writes requests as the gateway would, reads any Keel topic from the start."""

    def __init__(self, settings: Settings, workers: Workers) -> None:
        from confluent_kafka import Producer

        from infra.kafka import producer_config

        self.settings = settings
        self.workers = workers
        self.codec = Codec()
        self.producer = Producer(producer_config(settings, "test-gateway", linger_ms=1))
        self.readers: dict[str, object] = {}

    def send_request(self, request: dict) -> None:
        uid = request["user_id"]
        self.producer.produce(self.settings.topic("requests"), key=user_key(uid),
                              value=self.codec.encode("order_request", request),
                              partition=user_partition(uid, self.settings.user_partitions))

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def reader(self, short: str):
        from confluent_kafka import Consumer

        from infra.kafka import consumer_config

        if short not in self.readers:
            c = Consumer(consumer_config(self.settings, f"test-{uuid.uuid4().hex[:8]}"))
            c.subscribe([self.settings.topic(short)])
            self.readers[short] = c
        return self.readers[short]

    def read(self, short: str, decode: Callable[[bytes], object], until: Callable[[list], bool],
             wait: float = WAIT, quiet: float = 0.0) -> list:
        """Records of `short` (from the start) until `until(records)` holds; then, with
        `quiet`, on until nothing more arrives for that many seconds."""
        got: list = getattr(self, f"_got_{short.replace('.', '_')}", [])
        setattr(self, f"_got_{short.replace('.', '_')}", got)
        reader = self.reader(short)
        deadline = time.monotonic() + wait
        while not until(got):
            self.workers.check()
            if time.monotonic() > deadline:
                raise AssertionError(f"{short}: gave up waiting after {len(got)} records\n"
                                     f"{self.workers.logs()}")
            for msg in reader.consume(10_000, 0.2):
                if msg.error() is None:
                    got.append(decode(msg.value()))
        while quiet:
            batch = [m for m in reader.consume(10_000, quiet) if m.error() is None]
            if not batch:
                break
            got += [decode(m.value()) for m in batch]
        return got

    def close(self) -> None:
        for c in self.readers.values():
            c.close()


@pytest.fixture
def client(stream_settings: Settings, workers: Workers) -> Iterator[Client]:
    c = Client(stream_settings, workers)
    try:
        yield c
    finally:
        c.close()
