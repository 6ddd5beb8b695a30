"""Faust's per-record hand-off from its consumer to the streams, without four tasks a record.

Faust's fetch loop hands every fetched record to the streams with
`wait_first(deliver(record), suspend_flow.wait())`: four asyncio tasks (the delivery, the
flow event, the consumer's stopped and crashed events), an `asyncio.wait` and three
cancellations per record — the largest single cost of consuming, measured with py-spy on
the accounts worker (bench/streams.py).

The delivery almost always finishes without waiting (the stream's queue has room, flow
is not suspended), so it is first run one step inline: if it finishes, that is all. If it
waits (a full queue, a rebalance), the waiting rest goes through the usual `wait_first`,
so a suspended flow still interrupts it exactly as before.
"""
from __future__ import annotations

import asyncio

_installed = False


async def _rest(coro, waited):
    """Run the remainder of a coroutine that already yielded `waited` to the loop."""
    try:
        while True:
            try:
                if waited is None:            # a bare yield (asyncio.sleep(0))
                    await asyncio.sleep(0)
                else:
                    await asyncio.wait((waited,))
            except asyncio.CancelledError:
                if waited is not None:
                    waited.cancel()
                coro.throw(asyncio.CancelledError())   # let it clean up, then stop
                raise
            waited = coro.send(None)
    except StopIteration as done:
        return done.value
    finally:
        coro.close()


def install() -> None:
    """Patch Faust's consumer (idempotent); call before the app starts."""
    global _installed
    if _installed:
        return
    _installed = True

    from faust.transport.consumer import Consumer
    from mode.services import Service, WaitResults

    async def wait_first(self, *coros, timeout=None):
        if (timeout is None and len(coros) == 2 and asyncio.iscoroutine(coros[0])
                and getattr(coros[1], "__qualname__", "") == "Event.wait"
                and not self.suspend_flow.is_set()):
            deliver, flow = coros
            try:
                waited = deliver.send(None)
            except StopIteration as done:
                flow.close()                       # never started: nothing to cancel
                return WaitResults([deliver], [done.value], False)
            coros = (_rest(deliver, waited), flow)
        return await Service.wait_first(self, *coros, timeout=timeout)

    Consumer.wait_first = wait_first
