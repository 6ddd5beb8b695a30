"""The embedded ClickHouse: the one process that owns the chDB data dir.

It opens `<data_dir>/clickhouse` through clickhouse-connect's chdb:// DSN and answers
the small HTTP protocol described in infra/clickhouse.py on 127.0.0.1. The ClickHouse
sink will take this role (reuse `ClickHouseOwner` and add its consumer), so the dir keeps
exactly one owner.
"""
from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from infra.clickhouse import open_client
from infra.settings import Settings

MAX_SQL_BYTES = 1 << 20


class ClickHouseOwner:
    """Holds the only chDB client of this data dir; chDB is used by one thread at a time."""

    def __init__(self, settings: Settings) -> None:
        self.client = open_client(settings)
        self.lock = threading.Lock()

    def raw(self, sql: str, fmt: str) -> bytes:
        with self.lock:
            if _returns_rows(sql):
                return self.client.raw_query(sql, fmt=fmt)
            # DDL and INSERT ... VALUES: a FORMAT clause appended to them would be data.
            result = self.client.command(sql)
            return b"" if result is None else f"{result}\n".encode()

    def ping(self) -> bool:
        with self.lock:
            return self.client.query("SELECT 1").result_rows == [(1,)]

    def close(self) -> None:
        with self.lock:
            self.client.close()


_ROW_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")


def _returns_rows(sql: str) -> bool:
    words = sql.lstrip(" \t\r\n(").split(None, 1)
    return bool(words) and words[0].upper() in _ROW_STATEMENTS


def _handler(owner: ClickHouseOwner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/ping":
                return self._reply(404, b"not found\n")
            try:
                ok = owner.ping()
            except Exception as exc:  # report, do not die: health is the question
                return self._reply(503, f"{exc}\n".encode())
            self._reply(200 if ok else 503, b"Ok.\n" if ok else b"unexpected answer\n")

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/query":
                return self._reply(404, b"not found\n")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_SQL_BYTES:
                return self._reply(400, b"send one SQL statement as the request body\n")
            sql = self.rfile.read(length).decode()
            fmt = parse_qs(parts.query).get("format", ["JSONEachRow"])[0]
            try:
                body = owner.raw(sql, fmt)
            except Exception as exc:  # a bad query is the caller's error, not ours
                return self._reply(400, f"{exc}\n".encode())
            self._reply(200, body)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per health probe would drown the log

    return Handler


def serve(owner: ClickHouseOwner, port: int, stop: threading.Event) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(owner))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):  # a timed wait keeps signal handlers responsive
            pass
    finally:
        server.shutdown()
        server.server_close()


def run(settings: Settings) -> int:
    """`keel services clickhouse`: own the chDB dir and serve it until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    owner = ClickHouseOwner(settings)
    try:
        print(f"chDB {settings.clickhouse_dsn} served on 127.0.0.1:"
              f"{settings.embedded_clickhouse_port}", flush=True)
        serve(owner, settings.embedded_clickhouse_port, stop)
    finally:
        owner.close()
    return 0
