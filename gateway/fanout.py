"""Fan-out of stream messages to WebSocket clients, where a slow client can never stall
the others.

A message is encoded once per wire form — raw or combined wrapper, plain or deflated —
into a complete WebSocket frame, and that same frame is queued to every subscriber that
takes that form. Queued frames are written once per client per loop turn, joined into a
single socket write, so a burst of trades costs each client one syscall rather than one
per message. A shared deflated frame is only valid because the server never keeps its
compression context between messages (server_no_context_takeover, which gateway.ws
always negotiates).

A client whose socket stops draining keeps its frames queued; when `limit` frames are
waiting it is dropped, so one stalled socket costs the publisher nothing more than a
length check.
"""
from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable

OUTBOX = 2048               # frames a client may have waiting before it is dropped
HIGH_WATER = 64 * 1024      # bytes in a socket's send buffer past which we stop writing


def frame(payload: bytes, deflated: bool = False) -> bytes:
    """One unmasked, final text frame (server to client) carrying `payload`."""
    first = 0xC1 if deflated else 0x81              # FIN, RSV1 when compressed, text
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def deflate_frame(payload: bytes, window_bits: int) -> bytes:
    """permessage-deflate with a fresh compressor per message (no context takeover), so
    any client that negotiated the extension can inflate it on its own."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -window_bits)
    body = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    return frame(body.removesuffix(b"\x00\x00\xff\xff"), deflated=True)


class Subscriber:
    """One connection: its streams, the frames waiting for its socket, and its wire form
    (`variant`: combined wrapper or not, deflate window bits or 0)."""

    __slots__ = ("transport", "combined", "variant", "streams", "pending", "limit",
                 "dropped", "queued", "user_id", "sent", "on_drop")

    def __init__(self, transport: asyncio.WriteTransport, combined: bool = False,
                 limit: int = OUTBOX, deflate: int = 0) -> None:
        self.transport = transport
        self.combined = combined
        self.variant = (combined, deflate)
        self.streams: set[str] = set()
        self.pending: list[bytes] = []
        self.limit = limit
        self.dropped = False
        self.queued = False                  # in the hub's list of clients to flush
        self.user_id: int | None = None
        self.sent = 0
        # Called once when the client is dropped: the connection closes itself (its socket
        # may never drain).
        self.on_drop: Callable[[], None] | None = None

    def offer(self, data: bytes) -> bool:
        """Queue one frame; False (and the client marked dropped) when its queue is full."""
        if self.dropped:
            return False
        if len(self.pending) >= self.limit:
            self.dropped = True
            self.pending.clear()
            if self.on_drop is not None:
                self.on_drop()
            return False
        self.pending.append(data)
        return True

    def flush(self) -> bool:
        """Write what is queued in one go; False while the socket's buffer is too full."""
        pending = self.pending
        if self.dropped or not pending:
            return True
        transport = self.transport
        if transport.is_closing():
            pending.clear()
            return True
        if transport.get_write_buffer_size() > HIGH_WATER:
            return False
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self.sent += len(pending)
        pending.clear()
        return True


class Message:
    """One stream message, its frames built lazily once per wire form."""

    __slots__ = ("stream", "data", "frames", "_raw", "_combined")

    def __init__(self, stream: str, data: dict) -> None:
        self.stream, self.data = stream, data
        self.frames: dict[tuple[bool, int], bytes] = {}
        self._raw: bytes | None = None
        self._combined: bytes | None = None

    def text(self, combined: bool) -> bytes:
        if combined:
            if self._combined is None:
                self._combined = json.dumps({"stream": self.stream, "data": self.data},
                                            separators=(",", ":")).encode()
            return self._combined
        if self._raw is None:
            self._raw = json.dumps(self.data, separators=(",", ":")).encode()
        return self._raw

    def frame(self, variant: tuple[bool, int]) -> bytes:
        combined, deflate = variant
        payload = self.text(combined)
        out = self.frames[variant] = deflate_frame(payload, deflate) if deflate else \
            frame(payload)
        return out


class Hub:
    def __init__(self, on_drop: Callable[[Subscriber], None] | None = None,
                 on_sent: Callable[[str, int], None] | None = None) -> None:
        self.streams: dict[str, set[Subscriber]] = {}
        self.users: dict[int, set[Subscriber]] = {}
        self.on_drop = on_drop
        self.on_sent = on_sent
        self._dirty: list[Subscriber] = []
        self._soon: asyncio.Handle | None = None          # flush at the end of this turn
        self._retry: asyncio.TimerHandle | None = None    # flush for backed-up sockets

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
        return self._deliver(list(subs), Message(stream, data), pair)

    def publish_user(self, user_id: int, data: dict) -> int:
        subs = self.users.get(user_id)
        if not subs:
            return 0
        return self._deliver(list(subs), Message("userData", data), "")

    def send_text(self, sub: Subscriber, text: str) -> bool:
        """A reply to one client (control frames), in order with its stream messages."""
        if not sub.offer(frame(text.encode())):
            self._dropped(sub)
            return False
        self._queue(sub)
        return True

    def _deliver(self, subs: list[Subscriber], msg: Message, pair: str) -> int:
        delivered = 0
        frames = msg.frames
        dirty = self._dirty
        for sub in subs:
            data = frames.get(sub.variant) or msg.frame(sub.variant)
            if sub.offer(data):
                delivered += 1
                if not sub.queued:
                    sub.queued = True
                    dirty.append(sub)
            else:
                self._dropped(sub)
        if dirty and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.flush)
        if self.on_sent is not None and delivered:
            self.on_sent(pair, delivered)
        return delivered

    def _queue(self, sub: Subscriber) -> None:
        if not sub.queued:
            sub.queued = True
            self._dirty.append(sub)
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.flush)

    def _dropped(self, sub: Subscriber) -> None:
        self.remove(sub)
        if self.on_drop is not None:
            self.on_drop(sub)

    def flush(self) -> None:
        """Write every queued client's frames; clients whose socket is backed up are tried
        again shortly (their queue keeps growing until they drain or are dropped)."""
        self._soon = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        dirty, self._dirty = self._dirty, []
        for sub in dirty:
            if sub.flush():
                sub.queued = False
            else:
                self._dirty.append(sub)
        if self._dirty:
            self._retry = asyncio.get_running_loop().call_later(0.01, self.flush)
