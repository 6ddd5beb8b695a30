"""`keel up` as an operator runs it: a subprocess on its own data dir and ports."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from infra.embedded import free_port, free_ports

KEEL = [sys.executable, "-m", "infra.cli"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(10**6)"]
WAIT = 150.0    # longer than keel up's own start timeout, so its diagnosis is seen
METRICS_SPAN = 70  # engine +10.., streams +30.., sinks +40.., standby +60..


class Stack:
    """A running `keel up` with its output collected line by line."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "KEEL_DATA_DIR": str(data_dir),
                    "KEEL_EMBEDDED_KAFKA_PORT": str(free_port()),
                    "KEEL_EMBEDDED_POSTGRES_PORT": str(free_port()),
                    "KEEL_EMBEDDED_CLICKHOUSE_PORT": str(free_port()),
                    "KEEL_METRICS_PORT_BASE": str(free_ports(METRICS_SPAN)),
                    "KEEL_GATEWAY_PORT": str(free_port()),
                    "KEEL_EXTRA_PROCESSES": json.dumps([{"name": "sleeper", "argv": SLEEPER}])}
        for name in ("KEEL_KAFKA_BOOTSTRAP", "KEEL_POSTGRES_URL", "KEEL_CLICKHOUSE_URL"):
            self.env.pop(name, None)
        self.env.update(env)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([*KEEL, "up"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"keel up exited:\n{self.output}{self.logs()}"
            assert time.monotonic() < deadline, \
                f"no {text!r} from keel up:\n{self.output}{self.logs()}"
            time.sleep(0.1)

    def logs(self, lines: int = 15) -> str:
        """The end of every process log, for a failure message that says why."""
        tails = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"\n--- {log.name} ---\n" + "\n".join(tail))
        return "".join(tails)

    def state(self) -> dict:
        return json.loads((self.data_dir / "run" / "state.json").read_text())

    def pid(self, name: str) -> int | None:
        return self.state()["processes"][name]["pid"]

    def keel(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*KEEL, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def wait_healthy(self, timeout: float = WAIT) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + timeout
        while (status := self.keel("status")).returncode != 0:
            assert time.monotonic() < deadline, f"never healthy:\n{status.stdout}"
            time.sleep(0.5)
        return status

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        left = self.descendants() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in left:  # a failed test must not leave servers behind either
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def _gone(processes: list[psutil.Process], timeout: float = 30.0) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    running = Stack(tmp_path_factory.mktemp("keel"))
    try:
        running.wait_for("every component healthy")
        yield running
    finally:
        running.close()


def test_up_reports_where_to_look_and_status_is_healthy(stack):
    for what in ("kafka", "postgres", "clickhouse", "logs", str(stack.data_dir)):
        assert what in stack.output
    status = stack.keel("status")
    assert status.returncode == 0, status.stdout
    for name in ("kafka", "postgres", "clickhouse", "sleeper"):
        assert any(line.startswith(name) and " healthy " in line
                   for line in status.stdout.splitlines()), status.stdout
    logs = {p.name for p in (stack.data_dir / "logs").iterdir()}
    assert {"kafka.log", "postgres.log", "clickhouse.log", "sleeper.log"} <= logs


def test_topics_and_schema_are_provisioned(stack):
    assert stack.keel("topics", "describe").returncode == 0
    migrated = stack.keel("migrate")
    assert migrated.returncode == 0 and "schema up to date" in migrated.stdout


def test_a_second_up_on_the_same_data_dir_is_refused(stack):
    second = stack.keel("up", timeout=30)
    assert second.returncode == 3
    assert (f"Keel is already running on {stack.data_dir} (pid {stack.proc.pid})"
            in second.stderr)
    assert stack.keel("status").returncode == 0  # and nothing was disturbed


def test_each_child_has_its_own_process_group(stack):
    for name in ("kafka", "postgres", "clickhouse", "sleeper"):
        pid = stack.pid(name)
        assert os.getpgid(pid) == pid != os.getpgid(stack.proc.pid)


def test_a_killed_process_is_restarted(stack):
    old = stack.pid("sleeper")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while stack.pid("sleeper") in (old, None):
        assert time.monotonic() < deadline, stack.output
        time.sleep(0.1)
    assert stack.state()["processes"]["sleeper"]["restarts"] == 1
    stack.wait_healthy()


def test_a_killed_broker_comes_back_with_the_topic_catalog(stack):
    old = stack.pid("kafka")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while stack.pid("kafka") in (old, None) or not stack.state()["processes"]["kafka"]["healthy"]:
        assert time.monotonic() < deadline, stack.output
        time.sleep(0.1)
    stack.wait_healthy()
    describe = stack.keel("topics", "describe")
    assert describe.returncode == 0, describe.stdout


def test_sigterm_stops_everything_and_frees_the_lock(stack):
    children = stack.descendants()
    assert len(children) >= 5  # tansu, pg wrapper + postmaster..., chDB owner, sleeper
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(60) == 0
    assert _gone(children) == []
    stack.wait_for("keel up: stopped")
    assert not (stack.data_dir / "run" / "state.json").exists()
    with open(stack.data_dir / "run" / "keel.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it any more
    status = stack.keel("status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_a_killed_supervisor_leaves_no_orphans(tmp_path):
    running = Stack(tmp_path / "keel")
    try:
        running.wait_for("every component healthy")
        children = running.descendants()
        running.proc.kill()  # no chance to clean up: the children must follow on their own
        running.proc.wait(30)
        assert _gone(children, timeout=60) == []
        status = running.keel("status")
        assert status.returncode == 1 and "not running" in status.stdout
        # The lock died with its holder: a new supervisor starts on the same dir.
        again = Stack(running.data_dir)
        try:
            again.wait_for("every component healthy")
        finally:
            again.close()
    finally:
        running.close()



def test_services_given_by_url_are_used_not_started(tmp_path, kafka_bootstrap, make_database):
    """With KEEL_KAFKA_BOOTSTRAP and KEEL_POSTGRES_URL set, keel up starts neither and
    provisions the configured ones (topics on that broker, schema in that database)."""
    import psycopg

    dsn = make_database()
    running = Stack(tmp_path / "keel", KEEL_KAFKA_BOOTSTRAP=kafka_bootstrap,
                    KEEL_POSTGRES_URL=dsn, KEEL_TOPIC_PREFIX="ext.", KEEL_EXTRA_PROCESSES="")
    try:
        running.wait_for("every component healthy")
        started = set(running.state()["processes"])
        # The configured services are used as they are; only chDB is still embedded.
        assert "kafka" not in started and "postgres" not in started
        assert "clickhouse" in started
        status = running.keel("status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("external") == 2
        assert running.keel("topics", "describe").returncode == 0
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1
        assert dsn not in running.output  # a configured URL is never echoed
    finally:
        running.close()
