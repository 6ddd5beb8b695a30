"""A lean HTTP/1.1 client for the load generator's REST traffic: keep-alive connections
in a pool, one request at a time on each (no pipelining, so one slow answer never
delays another's measurement), the request written as one prepared byte string and the
answer cut by its Content-Length. The body comes back as bytes; the caller decodes JSON
only where it needs it. `submit` calls back with the answer (no task, no future per
request); `request` is the awaitable form for the few calls that wait.

Why not aiohttp's client: on this 2-core machine the load generator shares the cores
with the stack it measures, and aiohttp spent ~200 us of CPU per request more than this
client does (headers, cookie jar, timers, StreamReader and a task per request). The
gateway (aiohttp server) always answers with a Content-Length; an answer without one is
a protocol error (the connection is dropped and the request fails).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

# on_answer(status, body, error): (status, bytes, None) or (0, b"", the exception)
OnAnswer = Callable[[int, bytes, BaseException | None], None]


class HttpError(Exception):
    """Transport or protocol failure: no HTTP answer was read."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.on_answer: OnAnswer | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.body_at = -1            # index of the body in buf once the head is read
        self.length = 0
        self.keep = True
        self.lost = False

    def send(self, data: bytes, on_answer: OnAnswer, timeout: float) -> None:
        self.on_answer = on_answer
        self.timer = self.pool.loop.call_later(timeout, self._expire)
        self.transport.write(data)

    def _finish(self, status: int, body: bytes, error: BaseException | None) -> None:
        on_answer, self.on_answer = self.on_answer, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if error is not None or not self.keep:
            self.lost = True
            self.transport.close()
        elif not self.lost:
            self.pool.idle.append(self)
        if on_answer is not None:
            on_answer(status, body, error)

    def _expire(self) -> None:
        self.timer = None
        if self.on_answer is not None:
            self._finish(0, b"", TimeoutError())

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.on_answer is not None:
            self._finish(0, b"", HttpError(f"connection closed: {exc or 'by the server'}"))

    def data_received(self, data: bytes) -> None:
        if self.on_answer is None:    # nothing asked (or given up): drop the connection
            self.lost = True
            self.transport.close()
            return
        self.buf += data
        if self.body_at < 0 and not self._head():
            return
        end = self.body_at + self.length
        if len(self.buf) < end:
            return
        body = bytes(self.buf[self.body_at:end])
        del self.buf[:end]
        self.body_at = -1
        self._finish(self.status, body, None)

    def _head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end]).lower()
        try:
            self.status = int(head[9:12])
            i = head.index(b"\r\ncontent-length:")
            j = head.find(b"\r\n", i + 2)
            self.length = int(head[i + 17:j if j >= 0 else None])
        except ValueError:
            self._finish(0, b"", HttpError("answer without a Content-Length"))
            return False
        self.keep = b"\r\nconnection: close" not in head
        self.body_at = end + 4
        return True


class Pool:
    """Keep-alive connections to one host:port."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = f"{self.host}:{self.port}"
        self.timeout = timeout
        self.idle: list[_Connection] = []
        self.opened = 0              # connections made over the run (for the report)
        self.loop: asyncio.AbstractEventLoop | None = None

    def head(self, method: str, target: str, api_key: str | None) -> bytes:
        """The request bytes (no body: parameters travel in the query string)."""
        key = f"X-MBX-APIKEY: {api_key}\r\n" if api_key else ""
        length = "Content-Length: 0\r\n" if method != "GET" else ""
        return (f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n{key}{length}\r\n"
                ).encode()

    def submit(self, method: str, target: str, api_key: str | None,
               on_answer: OnAnswer) -> None:
        """Send now on an idle connection (or a new one); on_answer is called once."""
        self.loop = self.loop or asyncio.get_running_loop()
        data = self.head(method, target, api_key)
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                conn.send(data, on_answer, self.timeout)
                return
        self.loop.create_task(self._connect(data, on_answer))

    async def _connect(self, data: bytes, on_answer: OnAnswer) -> None:
        try:
            _t, conn = await self.loop.create_connection(lambda: _Connection(self),
                                                         self.host, self.port)
        except OSError as exc:
            on_answer(0, b"", exc)
            return
        self.opened += 1
        conn.send(data, on_answer, self.timeout)

    async def request(self, method: str, target: str, api_key: str | None = None
                      ) -> tuple[int, bytes]:
        """(status, body bytes); raises HttpError, OSError or TimeoutError."""
        answer = asyncio.get_running_loop().create_future()

        def done(status: int, body: bytes, error: BaseException | None) -> None:
            if answer.done():
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result((status, body))
        self.submit(method, target, api_key, done)
        return await answer

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()
