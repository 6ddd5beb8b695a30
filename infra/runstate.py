"""The run directory: the supervisor's lock and the state file `keel status` reads.

The lock is an fcntl.flock held for the supervisor's lifetime; the kernel releases it
when the process ends however it ends, so a lock can never go stale.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from infra.settings import Settings


class AlreadyRunning(RuntimeError):
    pass


def lock_path(settings: Settings) -> Path:
    return settings.run_dir / "keel.lock"


def state_path(settings: Settings) -> Path:
    return settings.run_dir / "state.json"


class RunLock:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        path = lock_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"Keel is already running on {self.settings.data_dir} (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def supervisor_running(settings: Settings) -> bool:
    """True while some `keel up` holds the lock on this data dir."""
    path = lock_path(settings)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def write_state(settings: Settings, state: dict) -> None:
    path = state_path(settings)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2)
    os.replace(tmp, path)  # readers never see half a file


def read_state(settings: Settings) -> dict | None:
    try:
        return json.loads(state_path(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def clear_state(settings: Settings) -> None:
    state_path(settings).unlink(missing_ok=True)
