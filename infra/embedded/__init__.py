"""The embedded services `keel up` runs when no URL is configured: tansu (Kafka API),
PostgreSQL 18 and a chDB owner process. Each runs in the foreground under
`keel services <name>`, so the supervisor starts, watches and restarts them like any
other Keel process. Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import ctypes
import random
import signal
import socket
import subprocess

_PR_SET_PDEATHSIG = 1


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _listen_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: no client socket is ever given one, so a
    port found free here stays free until our server binds it (a port from bind(0) is in
    the ephemeral range, where any outgoing connection may take it first)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low) if low - 10000 >= 4096 else (0, 0)


def free_ports(count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports that are all free now, outside the ephemeral
    range when the kernel leaves room for it."""
    start, stop = _listen_range()
    for _ in range(500 if stop else 0):
        first = random.randrange(start, stop - count)
        if not any(port_in_use(first + k, host) for k in range(count)):
            return first
    while True:  # no room below the ephemeral range: the kernel's choice, checked
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            first = sock.getsockname()[1]
        if first + count <= 65536 and not any(port_in_use(first + k, host)
                                              for k in range(1, count)):
            return first


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies.

    Called in a child between fork and exec, so a supervisor killed with SIGKILL still
    takes its children down instead of leaving orphans holding ports and data dirs.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:  # not Linux: the supervisor's own shutdown still stops children
        pass


def stop_child(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Ask a child to stop with `sig`; kill it if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
