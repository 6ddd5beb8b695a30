"""The embedded ClickHouse: the one process that owns the chDB data dir.

It opens `<data_dir>/clickhouse` through clickhouse-connect's chdb:// DSN and answers
the small HTTP protocol described in infra/clickhouse.py on 127.0.0.1. The ClickHouse
sink takes this role (`keel sink clickhouse` calls `host()`: the owner plus the sink's
consumer in one process), so the dir keeps exactly one owner.

Analysts' queries (`keel sql`) come as POST /query?readonly=1: they run on a second chDB
handle that is set readonly, so ClickHouse itself refuses writes, DDL and SET, and they do
not wait behind the sink's inserts. /metrics serves the hosted sink's Prometheus registry.
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
        self.settings = settings
        self.client = open_client(settings)
        self.lock = threading.Lock()
        self._reader = None                      # the read-only handle, opened on first use
        self.reader_lock = threading.Lock()
        self.metrics_registry = None             # set by host(): the hosted sink's metrics

    def raw_readonly(self, sql: str, fmt: str) -> bytes:
        """An analyst's query: refused by ClickHouse unless it only reads."""
        with self.reader_lock:
            if self._reader is None:
                reader = open_client(self.settings)
                # Per-handle session setting: every later query on it is read-only.
                reader.command("SET readonly = 1")
                self._reader = reader
            return self._reader.raw_query(sql, fmt=fmt)

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
        with self.reader_lock:
            if self._reader is not None:
                self._reader.close()
        with self.lock:
            self.client.close()


_ROW_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")


def _returns_rows(sql: str) -> bool:
    words = sql.lstrip(" \t\r\n(").split(None, 1)
    return bool(words) and words[0].upper() in _ROW_STATEMENTS


def _handler(owner: ClickHouseOwner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/metrics" and owner.metrics_registry is not None:
                from prometheus_client import generate_latest
                return self._reply(200, generate_latest(owner.metrics_registry))
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
            query = parse_qs(parts.query)
            fmt = query.get("format", ["JSONEachRow"])[0]
            readonly = query.get("readonly", ["0"])[0] not in ("0", "")
            try:
                body = owner.raw_readonly(sql, fmt) if readonly else owner.raw(sql, fmt)
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


def host(settings: Settings, work, metrics_registry=None) -> int:
    """Own the chDB dir, serve it, and run `work(owner, stop)` (the ClickHouse sink) in a
    worker thread until SIGTERM/SIGINT. A worker that fails stops the process (exit 1), so
    the supervisor restarts owner and sink together."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    owner = ClickHouseOwner(settings)
    owner.metrics_registry = metrics_registry
    failed = threading.Event()

    def worker() -> None:
        try:
            work(owner, stop)
        except BaseException:
            failed.set()
            raise
        finally:
            stop.set()

    thread = threading.Thread(target=worker, name="clickhouse-sink")
    try:
        print(f"chDB {settings.clickhouse_dsn} served on 127.0.0.1:"
              f"{settings.embedded_clickhouse_port} with the ClickHouse sink", flush=True)
        thread.start()
        serve(owner, settings.embedded_clickhouse_port, stop)
        thread.join(60)
    finally:
        owner.close()
    return 1 if failed.is_set() else 0
