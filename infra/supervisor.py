"""The supervisor behind `keel up`: one OS process per spec, watched and restarted.

Each child runs in its own process group with its output in <data_dir>/logs/<name>.log.
A child that dies is restarted after an exponential backoff (reset once it has stayed up
a while). A child starts only when everything it depends on is healthy; when a service
becomes healthy (again) its provisioning step runs. A healthy child stays watched: its
health check runs every WATCH_EVERY seconds, and after FAILS_TO_UNHEALTHY failures in a
row it is reported unhealthy (state file, `keel status`, a log event). A Keel process
that stays unhealthy for RESTART_UNHEALTHY_AFTER seconds (alive but hung) is killed and
restarted like one that died; an embedded service is only reported, never restarted for
it (the embedded broker keeps topics in memory: restarting it would lose them). Stopping sends each child its stop
signal (Keel processes first, then the services they write to), waits a grace period,
then SIGKILLs the whole group, so nothing outlives the supervisor.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from infra.embedded import die_with_parent
from infra.logs import event
from infra.processes import ProcessSpec
from infra.settings import Settings

log = logging.getLogger("keel.supervisor")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0          # seconds up before the backoff resets
HEALTH_EVERY = 0.25          # seconds between probes of a child that is not yet healthy
WATCH_EVERY = 5.0            # seconds between probes of a healthy child
FAILS_TO_UNHEALTHY = 3       # failed probes in a row before a healthy child is reported
RESTART_UNHEALTHY_AFTER = 60.0   # seconds unhealthy before a (non-service) child restarts
TICK = 0.1


@dataclass
class Child:
    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    healthy: bool = False
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    next_start: float = 0.0
    next_probe: float = 0.0
    last_exit: int | None = None
    last_error: str = ""
    ever_healthy: bool = False       # since this start: failing after it is "unhealthy"
    fails: int = 0                   # failed probes in a row while watched
    unhealthy_since: float | None = None
    killed_for: str = ""             # why the supervisor killed it, for the restart's note

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, settings: Settings, specs: list[ProcessSpec],
                 on_healthy: dict[str, Callable[[Settings], object]] | None = None,
                 on_change: Callable[[Supervisor], None] | None = None) -> None:
        self.settings = settings
        self.children = {s.name: Child(s) for s in specs}
        self.on_healthy = on_healthy or {}
        self.on_change = on_change or (lambda sup: None)
        self.stopping = False
        self.hurry = False
        self.log_dir = settings.log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        unknown = {d for s in specs for d in s.depends_on} - set(self.children)
        # A dependency that is not a child is an external service, healthy by then.
        self.external = unknown

    # ---- signals -------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopping:
            self.hurry = True  # a second Ctrl-C: stop waiting for graceful exits
        self.stopping = True

    # ---- one step of the control loop ----------------------------------------------
    def step(self) -> bool:
        """Start, probe, reap and restart children once. True when something changed."""
        now = time.monotonic()
        changed = False
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                self._reap(child, now)
                changed = True
            if child.proc is None:
                if now >= child.next_start and self._deps_healthy(child):
                    self._spawn(child, now)
                    changed = True
                continue
            if now >= child.next_probe:
                if child.ever_healthy:
                    changed |= self._watch(child, now)
                else:
                    changed |= self._probe(child, now)
            if child.healthy and now - child.started_at > STABLE_AFTER:
                child.backoff = BACKOFF_FIRST
        if changed:
            self.on_change(self)
        return changed

    def all_healthy(self) -> bool:
        return all(c.healthy and c.alive for c in self.children.values())

    def _deps_healthy(self, child: Child) -> bool:
        for dep in child.spec.depends_on:
            other = self.children.get(dep)
            if other is not None and not (other.healthy and other.alive):
                return False
        return True

    def _spawn(self, child: Child, now: float) -> None:
        env = {**os.environ, **child.spec.env,
               "KEEL_DATA_DIR": str(self.settings.data_dir.resolve()),
               "PYTHONUNBUFFERED": "1"}
        log_path = self.log_dir / f"{child.name}.log"
        with open(log_path, "ab") as out:
            out.write(f"---- keel up: starting {child.name} ({time.strftime('%FT%T%z')})\n"
                      .encode())
            out.flush()
            try:
                child.proc = subprocess.Popen(
                    child.spec.argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, process_group=0, close_fds=True,
                    preexec_fn=die_with_parent)
            except OSError as exc:
                child.last_error = f"cannot start: {exc}"
                child.next_start = now + child.backoff
                child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                event(log, "spawn failed", logging.ERROR, process=child.name, error=str(exc))
                return
        child.started_at = now
        child.healthy = False
        child.ever_healthy = False
        child.fails = 0
        child.unhealthy_since = None
        child.next_probe = now
        event(log, "started", process=child.name, pid=child.proc.pid)

    def _probe(self, child: Child, now: float) -> bool:
        child.next_probe = now + HEALTH_EVERY
        if child.spec.health is not None:
            result = child.spec.health.run(timeout=1.0)
            if not result.ok:
                child.last_error = result.detail
                return False
        step = self.on_healthy.get(child.name)
        if step is not None:
            try:
                step(self.settings)
            except Exception as exc:  # retried at the next probe; shown by status
                child.last_error = f"provisioning failed: {exc}"
                event(log, "provisioning failed", logging.ERROR, process=child.name,
                      error=str(exc))
                child.next_probe = now + 1.0
                return False
        child.healthy = True
        child.ever_healthy = True
        child.next_probe = now + WATCH_EVERY
        child.last_error = ""
        event(log, "healthy", process=child.name, pid=child.proc.pid)
        return True

    def _watch(self, child: Child, now: float) -> bool:
        """Probe a child that was healthy once: report it after a run of failures,
        recover it when it answers again, and restart a hung Keel process."""
        child.next_probe = now + (WATCH_EVERY if child.healthy else HEALTH_EVERY * 4)
        result = child.spec.health.run(timeout=1.0) if child.spec.health is not None else None
        if result is None or result.ok:
            child.fails = 0
            if child.healthy:
                return False
            child.healthy, child.unhealthy_since, child.last_error = True, None, ""
            event(log, "healthy again", process=child.name, pid=child.proc.pid)
            return True
        child.fails += 1
        if child.healthy:
            if child.fails < FAILS_TO_UNHEALTHY:
                return False
            child.healthy, child.unhealthy_since = False, now
            child.last_error = f"unhealthy: {result.detail}"
            event(log, "unhealthy", logging.ERROR, process=child.name, pid=child.proc.pid,
                  error=result.detail)
            return True
        if (not child.spec.service and child.unhealthy_since is not None
                and now - child.unhealthy_since >= RESTART_UNHEALTHY_AFTER):
            event(log, "unhealthy too long; restarting", logging.ERROR, process=child.name,
                  pid=child.proc.pid, error=result.detail)
            _kill_group(child.proc.pid)   # a hung process would not act on SIGTERM either
            child.unhealthy_since = None  # reaped and restarted by the next step
            child.killed_for = f"unhealthy for {RESTART_UNHEALTHY_AFTER:g}s ({result.detail})"
            return True
        return False

    def _reap(self, child: Child, now: float) -> None:
        code = child.proc.returncode
        _kill_group(child.proc.pid)  # whatever it left behind in its group goes too
        event(log, "exited", logging.WARNING, process=child.name, code=code,
              restart_in=child.backoff)
        child.proc = None
        child.healthy = False
        child.last_exit = code
        why = f"killed: {child.killed_for}" if child.killed_for else f"exited with code {code}"
        child.killed_for = ""
        child.last_error = f"{why}; restarting in {child.backoff:.1f}s"
        child.restarts += 1
        child.next_start = now + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    # ---- stopping ------------------------------------------------------------------
    def stop_all(self) -> None:
        """Keel processes first (they may still write to the services), then services."""
        keel = [c for c in self.children.values() if not c.spec.service]
        services = [c for c in reversed(list(self.children.values())) if c.spec.service]
        for batch in (keel, services):
            self._stop_batch(batch)
        self.on_change(self)

    def _stop_batch(self, batch: list[Child]) -> None:
        running = [c for c in batch if c.proc is not None]
        for child in running:
            if child.proc.poll() is None:
                _signal(child.proc.pid, child.spec.stop_signal)
        deadline = {c.name: time.monotonic() + (0 if self.hurry else c.spec.stop_grace)
                    for c in running}
        while running:
            for child in list(running):
                expired = time.monotonic() >= deadline[child.name] or self.hurry
                if child.proc.poll() is not None or expired:
                    if child.proc.poll() is None:
                        event(log, "did not stop in time; killing", logging.WARNING,
                              process=child.name)
                    _kill_group(child.proc.pid)
                    child.proc.wait()
                    child.healthy = False
                    running.remove(child)
            time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
