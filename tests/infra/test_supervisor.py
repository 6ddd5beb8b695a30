"""The supervisor's rules on plain processes: backoff, its reset, and stopping stubborn ones."""
from __future__ import annotations

import sys
import time

import psutil

from infra import supervisor as sup_mod
from infra.processes import ProcessSpec
from infra.settings import Settings
from infra.supervisor import BACKOFF_FIRST, Supervisor

PY = sys.executable


def _run_until(sup: Supervisor, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, {c.name: c.last_error for c in sup.children.values()}
        sup.step()
        time.sleep(0.02)


def test_a_crashing_process_is_restarted_with_doubling_backoff(tmp_path):
    spec = ProcessSpec("crasher", (PY, "-c", "raise SystemExit(7)"))
    sup = Supervisor(Settings(data_dir=tmp_path), [spec])
    child = sup.children["crasher"]
    try:
        _run_until(sup, lambda: child.restarts >= 3)
    finally:
        sup.stop_all()
    assert child.last_exit == 7
    assert child.backoff == BACKOFF_FIRST * 2 ** 3
    assert (tmp_path / "logs" / "crasher.log").read_text().count("starting crasher") == 3


def test_backoff_resets_once_a_process_stays_up(tmp_path, monkeypatch):
    monkeypatch.setattr(sup_mod, "STABLE_AFTER", 0.0)
    spec = ProcessSpec("steady", (PY, "-c", "import time; time.sleep(10**6)"))
    sup = Supervisor(Settings(data_dir=tmp_path), [spec])
    child = sup.children["steady"]
    child.backoff = 16.0  # as if it had crashed several times before
    try:
        _run_until(sup, lambda: child.healthy and child.backoff == BACKOFF_FIRST)
    finally:
        sup.stop_all()


def test_dependants_wait_for_their_dependencies(tmp_path):
    slow = ProcessSpec("slow", (PY, "-c", "import time; time.sleep(10**6)"))
    never = ProcessSpec("never", (PY, "-c", "import time; time.sleep(10**6)"),
                        health=_unreachable())
    after = ProcessSpec("after", (PY, "-c", "import time; time.sleep(10**6)"),
                        depends_on=("never", "slow"))
    sup = Supervisor(Settings(data_dir=tmp_path), [slow, never, after])
    try:
        _run_until(sup, lambda: sup.children["slow"].healthy)
        for _ in range(20):
            sup.step()
        assert sup.children["after"].proc is None
        assert not sup.children["never"].healthy
    finally:
        sup.stop_all()


def _unreachable():
    from infra.embedded import free_port
    from infra.health import HealthCheck

    return HealthCheck("http", f"http://127.0.0.1:{free_port()}/metrics")


def test_a_process_ignoring_sigterm_is_killed_with_its_group(tmp_path):
    stubborn = ("import signal, subprocess, sys, time;"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(10**6)']);"
                "time.sleep(10**6)")
    spec = ProcessSpec("stubborn", (PY, "-c", stubborn), stop_grace=0.5)
    sup = Supervisor(Settings(data_dir=tmp_path), [spec])
    child = sup.children["stubborn"]
    _run_until(sup, lambda: child.healthy
               and len(psutil.Process(child.proc.pid).children()) == 1)
    family = [psutil.Process(child.proc.pid), *psutil.Process(child.proc.pid).children()]
    sup.stop_all()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


def _served(name: str, **spec) -> ProcessSpec:
    """A process whose health URL answers (a stdlib HTTP server on a free port)."""
    from infra.embedded import free_port
    from infra.health import HealthCheck

    port = free_port()
    return ProcessSpec(name, (PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)),
                       health=HealthCheck("http", f"http://127.0.0.1:{port}/"), **spec)


def _quick_watch(monkeypatch) -> None:
    monkeypatch.setattr(sup_mod, "WATCH_EVERY", 0.05)
    monkeypatch.setattr(sup_mod, "FAILS_TO_UNHEALTHY", 2)
    monkeypatch.setattr(sup_mod, "RESTART_UNHEALTHY_AFTER", 1.0)


def test_a_hung_process_is_reported_then_restarted(tmp_path, monkeypatch):
    import os
    import signal

    _quick_watch(monkeypatch)
    sup = Supervisor(Settings(data_dir=tmp_path), [_served("hung")])
    child = sup.children["hung"]
    try:
        _run_until(sup, lambda: child.healthy)
        first = child.proc.pid
        os.kill(first, signal.SIGSTOP)      # alive, but answers nothing
        _run_until(sup, lambda: not child.healthy)
        assert child.last_error.startswith("unhealthy"), child.last_error
        assert child.proc.pid == first and child.restarts == 0
        _run_until(sup, lambda: child.restarts == 1)
        assert child.last_error.startswith("killed: unhealthy for"), child.last_error
        _run_until(sup, lambda: child.healthy)
        assert child.proc.pid != first
    finally:
        sup.stop_all()


def test_an_unhealthy_service_is_reported_not_restarted(tmp_path, monkeypatch):
    import os
    import signal

    _quick_watch(monkeypatch)
    sup = Supervisor(Settings(data_dir=tmp_path), [_served("broker", service=True)])
    child = sup.children["broker"]
    try:
        _run_until(sup, lambda: child.healthy)
        os.kill(child.proc.pid, signal.SIGSTOP)
        _run_until(sup, lambda: not child.healthy)
        stopped_at = time.monotonic()
        _run_until(sup, lambda: time.monotonic() - stopped_at > 3 * sup_mod.RESTART_UNHEALTHY_AFTER)
        assert child.restarts == 0 and not child.healthy and child.alive
        os.kill(child.proc.pid, signal.SIGCONT)
        _run_until(sup, lambda: child.healthy)
        assert child.last_error == "" and child.restarts == 0
    finally:
        sup.stop_all()
