"""Request/reply over Kafka: an OrderRequest goes to keel.requests (key: user id) and the
caller awaits accounts' Reply on keel.replies, matched by request id, within a deadline.

A timeout is not a failure of the request: it was produced and may still execute, which
is why every order carries a client order id the user can query by afterwards.
"""
from __future__ import annotations

import asyncio
import itertools
import os

from confluent_kafka import Producer

from gateway import errors
from gateway.place_record import PlaceRecordWriter
from gateway.state import Folding
from infra.kafka import producer_config
from infra.settings import Settings
from schemas.codec import Codec
from streams.keys import user_key, user_partition


class RequestBus:
    def __init__(self, settings: Settings, codec: Codec, folding: Folding,
                 timeout_s: float = 5.0) -> None:
        self.topic = settings.topic("requests")
        self.partitions = settings.user_partitions
        self.codec = codec
        self.places = PlaceRecordWriter(codec)
        self.folding = folding
        self.timeout_s = timeout_s
        # Delivery reports for failures only: a successful delivery needs no answer (the
        # reply is the answer), and a Python callback per order was pure cost.
        self.producer = Producer(producer_config(settings, client_id="keel-gateway",
                                                 linger_ms=1,
                                                 delivery_report_only_error=True))
        # Ids are a random per-process prefix and a counter: unique across instances and
        # restarts without a uuid4 (an os.urandom call, which gives up the GIL) per order.
        self._queued: list[tuple[bytes, int, asyncio.Future]] = []
        self._users: dict[int, tuple[bytes, int]] = {}       # user id -> (key, partition)
        self._produce_at: asyncio.Handle | None = None
        self._prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        # Delivery reports are served from the loop (poll(0) after each produce and on a
        # timer), not by a thread of their own contending for the GIL with the handlers.
        self._reports = asyncio.get_running_loop().create_task(self._serve_reports())

    async def _serve_reports(self) -> None:
        while True:
            self.producer.poll(0)
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self._reports.cancel()
        self.producer.flush(5)
        del self.producer          # librdkafka's client goes now, not whenever GC runs

    def new_request_id(self) -> str:
        return f"{self._prefix}{next(self._ids):x}"

    def new_client_order_id(self) -> str:
        """A default newClientOrderId: at most 36 characters, as Binance allows."""
        return f"keel{self._prefix[:12]}{next(self._ids):x}"

    async def ask(self, user_id: int, ts: int, body: tuple[str, dict], request_id: str | None = None,
                  timeout_s: float | None = None, validate: bool = True) -> dict:
        """Produce the request and return accounts' reply record; -1007 on timeout.

        A new order (PlaceOrder, built by gateway.order_form) is written by
        gateway.place_record; `validate=False` skips the schema walk for other bodies
        built from checked input."""
        request_id = request_id or self.new_request_id()
        if body[0] == "keel.PlaceOrder":
            value = self.places.encode(request_id, user_id, ts, body[1])
        else:
            record = {"request_id": request_id, "user_id": user_id, "ts": ts, "body": body}
            value = self.codec.encode("order_request", record, validate=validate)
        future = self.folding.expect_reply(request_id)
        loop = asyncio.get_running_loop()
        # One future carries the answer: the reply, a delivery failure, or the timeout
        # (asyncio.wait over two futures cost more than the rest of the wait machinery).
        self._queued.append((value, user_id, future))
        if self._produce_at is None:
            self._produce_at = loop.call_soon(self._produce_queued, loop)
        timer = loop.call_later(timeout_s or self.timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self.folding.forget_reply(request_id)

    def _produce_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every request of this loop turn, produced back to back: librdkafka wakes its
        sender once for the lot instead of once per request (a syscall made holding the
        GIL, ~15% of the handlers' time at a few hundred orders/s)."""
        self._produce_at = None
        queued, self._queued = self._queued, []
        users = self._users
        for value, user_id, future in queued:
            if future.done():
                continue                     # timed out or cancelled before it was sent
            # accounts owns a user's funds on the murmur2 partition of the user id: the
            # partition is chosen explicitly, never left to the client's partitioner
            # (murmur2 in Python, so once per user).
            route = users.get(user_id)
            if route is None:
                if len(users) > 100_000:
                    users.clear()
                route = users[user_id] = (user_key(user_id),
                                          user_partition(user_id, self.partitions))
            try:
                self.producer.produce(self.topic, value, key=route[0], partition=route[1],
                                      on_delivery=_on_delivery(loop, future))
            except BufferError:
                _fail(future, errors.disconnected(
                    "The gateway's Kafka queue is full; retry shortly."))
        self.producer.poll(0)


def _on_delivery(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    def report(err, _msg) -> None:
        if err is not None:
            loop.call_soon_threadsafe(_fail, future, errors.disconnected(
                "The request could not be written to Kafka; it was not executed."))
    return report


def _expire(future: asyncio.Future) -> None:
    _fail(future, errors.backend_timeout())


def _fail(future: asyncio.Future, err: errors.ApiError) -> None:
    if not future.done():
        future.set_exception(err)
