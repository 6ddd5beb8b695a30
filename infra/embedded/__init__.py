"""The embedded services `keel up` runs when no URL is configured: tansu (Kafka API),
PostgreSQL 18 and a chDB owner process. Each runs in the foreground under
`keel services <name>`, so the supervisor starts, watches and restarts them like any
other Keel process. Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import ctypes
import signal
import socket

_PR_SET_PDEATHSIG = 1


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
