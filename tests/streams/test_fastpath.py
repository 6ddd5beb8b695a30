"""streams.fastpath: a record's delivery that waits for room in a full stream queue
finishes inline once room is made, and is stopped (the record not queued) when the flow
is suspended or the consumer stops meanwhile — as Faust's `wait_first` would."""
from __future__ import annotations

import asyncio

from mode.utils.locks import Event as ModeEvent

from streams.fastpath import _rest


async def _delivery(queue: asyncio.Queue, value, log: list):
    try:
        await queue.put(value)
        log.append(("put", value))
    except asyncio.CancelledError:
        log.append(("cancelled", value))
        raise


def _waiting_delivery():
    """A full queue, its log, the three stop events (suspended, stopped, crashed) and a
    delivery of "b" that will have to wait for room (call inside the running loop)."""
    queue, log = asyncio.Queue(maxsize=1), []
    queue.put_nowait("a")
    events = (asyncio.Event(), ModeEvent(), ModeEvent())
    return queue, log, events, _delivery(queue, "b", log)


def _started(coro):
    waited = coro.send(None)            # as fastpath's wait_first runs the first step
    assert waited is not None           # the queue is full: the put waits
    return waited


def test_a_waiting_delivery_finishes_once_the_queue_has_room():
    async def main():
        queue, log, events, coro = _waiting_delivery()
        rest = asyncio.ensure_future(_rest(coro, _started(coro), events))
        await asyncio.sleep(0.01)
        assert not rest.done()
        assert await queue.get() == "a"
        assert await rest is True
        assert log == [("put", "b")]
        assert await queue.get() == "b"
        assert all(not e._waiters for e in events)      # nothing left registered
    asyncio.run(main())


def test_a_suspended_flow_stops_a_waiting_delivery():
    for which in range(3):                 # suspend_flow, stopped, crashed
        async def main(which=which):
            queue, log, events, coro = _waiting_delivery()
            rest = asyncio.ensure_future(_rest(coro, _started(coro), events))
            await asyncio.sleep(0.01)
            events[which].set()
            assert await rest is False
            assert log == [("cancelled", "b")]
            assert await queue.get() == "a"
            assert queue.empty()            # the stopped record never reached the queue
            queue.put_nowait("c")           # and holds no slot
        asyncio.run(main())


def test_an_already_stopped_consumer_does_not_wait():
    async def main():
        queue, log, events, coro = _waiting_delivery()
        waited = _started(coro)
        events[1].set()
        assert await asyncio.wait_for(_rest(coro, waited, events), 1.0) is False
        assert log == [("cancelled", "b")]
    asyncio.run(main())
