"""Faust's per-record hand-off from its consumer to the streams, without four tasks a record.

Faust's fetch loop hands every fetched record to the streams with
`wait_first(deliver(record), suspend_flow.wait())`: four asyncio tasks (the delivery, the
flow event, the consumer's stopped and crashed events), an `asyncio.wait` and three
cancellations per record — the largest single cost of consuming, measured with py-spy on
the accounts worker (bench/streams.py).

The delivery is first run one step inline: if it finishes (the stream's queue has room,
flow is not suspended), that is all. If it waits (a full queue: every record of a
backlog), the rest runs inline too, woken by the awaited future or by the flow being
suspended or the consumer stopping, which stop it as `wait_first` would.
"""
from __future__ import annotations

import asyncio
from functools import partial

_installed = False


def _ring(wake, _) -> None:
    if not wake.done():
        wake.set_result(None)


def _wake_on(loop, wake, events) -> list:
    """Register a future with each event's waiters (asyncio's and mode's Events both keep
    a `_waiters` deque their set() resolves): whichever is set first resolves `wake`."""
    ring = partial(_ring, wake)
    held = []
    for event in events:
        fut = loop.create_future()
        fut.add_done_callback(ring)
        event._waiters.append(fut)
        held.append((event, fut))
    return held


def _unregister(held) -> None:
    for event, fut in held:
        try:
            event._waiters.remove(fut)
        except ValueError:
            pass
        fut.cancel()


async def _rest(coro, waited, events):
    """Run the remainder of a delivery that already yielded `waited` to the loop, as its
    own task would, and stop it (cancelled, as `wait_first` would) once one of `events`
    (the flow suspended, the consumer stopped or crashed) is set. True if it finished.

    In a backlog every record's delivery waits for room in the stream's queue, and
    `wait_first`'s four tasks and `asyncio.wait` per record were ~10% of the accounts
    worker's CPU (py-spy, bench/streams.py): here a wait costs one future per event and
    a callback on the awaited one."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            if waited is None:                # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            elif not waited.done() and not any(event.is_set() for event in events):
                wake = loop.create_future()
                held = _wake_on(loop, wake, events)
                waited.add_done_callback(partial(_ring, wake))
                try:
                    await wake
                finally:
                    _unregister(held)
            if any(event.is_set() for event in events):
                if waited is not None:
                    waited.cancel()
                try:
                    coro.throw(asyncio.CancelledError())   # let it clean up, then stop
                except (asyncio.CancelledError, StopIteration):
                    pass
                return False
            waited = coro.send(None)
    except StopIteration:
        return True
    finally:
        coro.close()


def install() -> None:
    """Patch Faust's consumer (idempotent); call before the app starts."""
    global _installed
    if _installed:
        return
    _installed = True
    _settings_once()

    from faust.transport.consumer import Consumer
    from mode.services import Service, WaitResults

    async def wait_first(self, *coros, timeout=None):
        if (timeout is None and len(coros) == 2 and asyncio.iscoroutine(coros[0])
                and getattr(coros[1], "__qualname__", "") == "Event.wait"
                and not self.suspend_flow.is_set()):
            deliver, flow = coros
            flow.close()                           # never started: nothing to cancel
            try:
                waited = deliver.send(None)
            except StopIteration as done:
                return WaitResults([deliver], [done.value], False)
            if await _rest(deliver, waited, (self.suspend_flow, self._stopped, self._crashed)):
                return WaitResults([deliver], [None], False)
            return WaitResults([], [], True)
        return await Service.wait_first(self, *coros, timeout=timeout)

    Consumer.wait_first = wait_first


def _settings_once() -> None:
    """Two settings Faust looks up for every record it delivers, looked up once.

    Faust's settings are descriptors behind a registry's __getattribute__: the producer
    buffer's size (read to hold deliveries back while Faust's own producer is behind)
    asked `conf.producer_threaded`, and every event asked `conf.Event` for its class;
    py-spy (--gil, bench/streams.py --only accounts) put the two at ~4% of the accounts
    worker. Keel's outputs and changelogs go through librdkafka (streams.outputs), so
    that buffer holds only Faust's own sends (exactly_once); a threaded producer keeps
    Faust's check."""
    from faust import App
    from faust.transport.producer import ProducerBuffer

    ebb = ProducerBuffer.wait_until_ebb

    async def wait_until_ebb(self) -> None:
        if getattr(self, "queue", None) is None and len(self.pending._queue) <= self.max_messages:
            return
        await ebb(self)

    ProducerBuffer.wait_until_ebb = wait_until_ebb

    def create_event(self, key, value, headers, message):
        event = self.__dict__.get("_keel_event")
        if event is None:
            event = self.__dict__["_keel_event"] = self.conf.Event
        return event(self, key, value, headers, message)

    App.create_event = create_event
