"""Fan-out of stream messages to WebSocket clients, where a slow client can never stall
the others.

Each client owns a bounded outbox drained by its own writer task. Publishing appends the
already-encoded text to the outbox of every subscriber (encoding happens once per message,
not once per client); when an outbox is full the client is dropped, so one stalled socket
costs the publisher nothing more than a length check.
"""
from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable

OUTBOX = 2048                       # messages a client may have pending before it is dropped


class Subscriber:
    """One connection's outbox. `send` is the socket's coroutine to write one text frame."""

    __slots__ = ("send", "combined", "streams", "outbox", "limit", "_ready", "dropped",
                 "user_id", "sent", "on_drop")

    def __init__(self, send: Callable[[str], Awaitable[None]], combined: bool = False,
                 limit: int = OUTBOX) -> None:
        self.send = send
        self.combined = combined
        self.streams: set[str] = set()
        self.outbox: deque[str] = deque()
        self.limit = limit
        self._ready = asyncio.Event()
        self.dropped = False
        self.user_id: int | None = None
        self.sent = 0
        # Called once when the client is dropped: the connection closes itself (its writer
        # may be blocked on a socket that will never drain).
        self.on_drop: Callable[[], None] | None = None

    def offer(self, text: str) -> bool:
        """Queue `text`; False (and the client marked dropped) when its outbox is full."""
        if self.dropped:
            return False
        if len(self.outbox) >= self.limit:
            self.dropped = True
            self.outbox.clear()
            self._ready.set()
            if self.on_drop is not None:
                self.on_drop()
            return False
        self.outbox.append(text)
        self._ready.set()
        return True

    async def run_writer(self) -> None:
        """Drain the outbox to the socket until the client is dropped or the socket fails."""
        while not self.dropped:
            if not self.outbox:
                self._ready.clear()
                await self._ready.wait()
                continue
            text = self.outbox.popleft()
            await self.send(text)
            self.sent += 1


class Message:
    """One stream message, encoded lazily once per wrapper (raw for /ws, combined for /stream)."""

    __slots__ = ("stream", "data", "_raw", "_combined")

    def __init__(self, stream: str, data: dict) -> None:
        self.stream, self.data = stream, data
        self._raw: str | None = None
        self._combined: str | None = None

    def text(self, combined: bool) -> str:
        if combined:
            if self._combined is None:
                self._combined = json.dumps({"stream": self.stream, "data": self.data},
                                            separators=(",", ":"))
            return self._combined
        if self._raw is None:
            self._raw = json.dumps(self.data, separators=(",", ":"))
        return self._raw


class Hub:
    def __init__(self, on_drop: Callable[[Subscriber], None] | None = None,
                 on_sent: Callable[[str, int], None] | None = None) -> None:
        self.streams: dict[str, set[Subscriber]] = {}
        self.users: dict[int, set[Subscriber]] = {}
        self.on_drop = on_drop
        self.on_sent = on_sent

    def subscribe(self, sub: Subscriber, stream: str) -> None:
        sub.streams.add(stream)
        self.streams.setdefault(stream, set()).add(sub)

    def unsubscribe(self, sub: Subscriber, stream: str) -> None:
        sub.streams.discard(stream)
        subs = self.streams.get(stream)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.streams[stream]

    def attach_user(self, sub: Subscriber, user_id: int) -> None:
        sub.user_id = user_id
        self.users.setdefault(user_id, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        for stream in list(sub.streams):
            self.unsubscribe(sub, stream)
        if sub.user_id is not None:
            subs = self.users.get(sub.user_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.users[sub.user_id]

    def has(self, stream: str) -> bool:
        return stream in self.streams

    def publish(self, stream: str, data: dict, pair: str = "") -> int:
        subs = self.streams.get(stream)
        if not subs:
            return 0
        msg = Message(stream, data)
        return self._deliver(list(subs), msg, pair)

    def publish_user(self, user_id: int, data: dict) -> int:
        subs = self.users.get(user_id)
        if not subs:
            return 0
        return self._deliver(list(subs), Message("userData", data), "")

    def _deliver(self, subs: list[Subscriber], msg: Message, pair: str) -> int:
        delivered = 0
        for sub in subs:
            if sub.offer(msg.text(sub.combined)):
                delivered += 1
            else:
                self.remove(sub)
                if self.on_drop is not None:
                    self.on_drop(sub)
        if self.on_sent is not None and delivered:
            self.on_sent(pair, delivered)
        return delivered
