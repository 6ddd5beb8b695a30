"""A stream's records in batches that close as soon as nothing more is queued.

Faust's `Stream.take_events(max, within)` closes a batch only when it is full or when
`within` has passed since the previous one closed: every record waited for that timer even
when nothing else was coming. Traced on the accounts worker (bench/streams.py --only
latency, KEEL_STREAMS_TRACE), the 50 ms timer was the largest share of a request's
latency at 1,000/s; a 3 ms timer halved the preloaded drain's throughput (batches of a
few dozen records, each paying its broker round trips).

Here a batch closes when `idle` seconds pass with no new record (records reach the
stream in bursts, one per broker fetch, so a burst becomes one batch), when it holds
`max_` records, or `within` seconds after its first record. While a batch is in hand the
stream delivers nothing more (a record waits in the stream's queue, as with take_events),
so a batch's records are exactly the ones its caller acks; after the caller is done
each event is acked too, as take_events does (all at once, streams.acks) — unless
`ack=False`: then the caller acks them itself, later: streams.app's pipelined accounts asks
for the next batch while this one is still being delivered, and an ack makes an offset
committable (by a rebalance's commit, say) before its outputs are acknowledged.

Tried and dropped (measured on the accounts drain, bench/streams.py, same machine load):
handing each record to the agent as it arrives and closing a batch when the previous
one is delivered (a group commit) gave batches of 50-300 records instead of ~500 and
cost 204-300 us of CPU per request against 145: every batch writes each user it
touched to the changelog whole, so small batches write the same users over and over.
"""
from __future__ import annotations

import asyncio

from streams.acks import ack_batch


async def take_batches(stream, max_: int, within: float, idle: float = 0.001,
                       ack: bool = True, pending=None, per_key: int | None = None,
                       backlog: tuple[int, float] | None = None):
    """Yield lists of events (see the module docstring). With `per_key`, a batch also
    closes when that many of its records share one message key (accounts: one user's
    requests, whose decisions the user keeps for two batches, streams.ledger.DECISIONS).
    With `backlog` = (n, seconds), a batch that holds n records or more may go on
    gathering until `seconds` after its first instead of `within`: only a backlog fills
    a batch that fast, and there every record waits for a whole batch anyway, so a
    larger one costs nobody time and spreads each batch's fixed costs thinner.
    `pending`, if given, returns the
    futures its caller must see done before it can write another batch: until they are,
    the batch in the making stays open past its idle and `within` closings (up to
    `max_`), so a record arriving meanwhile still joins the next write instead of
    waiting behind it for another (streams.app._pipelined); once they are done and the
    stream has nothing queued, it closes without waiting out `idle` (if `pending`
    returns None, nothing is out: the batch closes as without it): on a live stream
    records come a few per fetch, so the idle rule held a batch open for fetch after
    fetch while the pipeline stood free. A backlog keeps the queue full, so a drain's
    batches are as large as before."""
    loop = asyncio.get_running_loop()
    backlog = backlog or (max_, within)
    events: list = []
    keys: dict = {}                          # per_key: records of the batch per key
    arrived = asyncio.Event()
    gate: asyncio.Future | None = None       # set while a batch is full or in hand

    async def add(value):
        while gate is not None:
            await asyncio.shield(gate)
        event = stream.current_event
        if event is None:
            raise RuntimeError("batch found no current event")
        events.append(event)
        arrived.set()
        if len(events) >= max_:
            _close()
        elif per_key is not None:
            key = event.message.key
            same = keys[key] = keys.get(key, 0) + 1
            if same >= per_key:
                _close()
        return value

    def _close() -> None:
        nonlocal gate
        if gate is None:
            gate = loop.create_future()

    def _open() -> None:
        nonlocal gate
        opened, gate = gate, None
        if opened is not None and not opened.done():
            opened.set_result(None)

    queued = getattr(stream.channel, "queue", None)
    queued = queued.qsize if queued is not None else (lambda: 1)
    acks = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not events:
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=1.0)
                continue
            first, count = loop.time(), 0
            while gate is None and len(events) != count and \
                    loop.time() - first < (within if len(events) < backlog[0] else backlog[1]):
                count = len(events)
                if pending is not None and queued() == 0 and pending() == []:
                    break         # nothing more to take, and the caller can write now
                await asyncio.sleep(idle)
            waits = pending() if pending is not None else None
            if waits:
                await asyncio.wait(waits)
            _close()
            batch = list(events)
            try:
                yield batch
            finally:
                events.clear()
                keys.clear()
                if ack:
                    ack_batch(stream.app.consumer, batch)   # those the caller left unacked
                _open()
    finally:
        stream.enable_acks = acks
        stream._processors.remove(add)
        _open()

