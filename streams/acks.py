"""A batch's events acked to Faust's consumer in one step, not one call chain each.

Faust acks record by record: `Event.ack` -> `Message.ack` (the ack lock, a decref) ->
`Consumer.ack` (the lock again, the unacked WeakSet, the acked index and list, a notify),
and `Stream.ack` adds a coroutine and two sensor calls on top. run_batches acks every
record of a batch at once, after the batch is durable; py-spy (--gil, bench/streams.py
--only accounts, 2026-11-23) put that per-record chain at ~8% of the accounts worker's
GIL time, plus a second pass of `Stream.ack` over the same events in streams.batches.

What Faust's commit needs is unchanged: each message is marked acked (and leaves the
unacked set that a rebalance or a stop waits on), and per partition the highest acked
offset is in `_acked`, which is all compat item 6's committable offset reads (one past
the highest acked). `_n_acked` still counts every record (Faust's commit_every).
"""
from __future__ import annotations

from faust.types.tuples import ack_lock
from mode.utils.futures import notify


def ack_batch(consumer, events) -> int:
    """Ack `events` (all of a batch, in any order) as Faust's per-event acks would, for
    messages whose last reference this is. Returns how many became acked."""
    tops: dict = {}
    unacked = consumer._unacked_messages
    count = 0
    with ack_lock:
        for event in events:
            message = event.message
            if message.acked:
                continue
            refs = message.refcount = max(message.refcount - 1, 0)
            if refs:
                continue            # another stream still holds it (not so in Keel's agents)
            message.acked = True
            count += 1
            unacked.discard(message)
            tp = message.tp
            if message.offset > tops.get(tp, -1):
                tops[tp] = message.offset
        mark_acked(consumer, tops, count)
    return count


def mark_acked(consumer, tops: dict, count: int) -> None:
    """Note `count` records acked, the highest of each partition in `tops` ({tp: offset});
    call under `ack_lock` (streams.bulk acks whole fetched chunks this way too)."""
    enabled = consumer.app.topics.acks_enabled_for
    for tp, offset in tops.items():
        if not enabled(tp.topic):
            continue
        committed = consumer._committed_offset[tp]
        if committed is None or offset >= committed:
            index = consumer._acked_index[tp]
            if offset not in index:
                index.add(offset)
                consumer._acked[tp].append(offset)
    consumer._n_acked += count
    notify(consumer._waiting_for_ack)
