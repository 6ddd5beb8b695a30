"""streams.bulk: a Lane's batches follow take_batches' closing rules over whole fetched
chunks (split where a cap falls), never hand out a chunk fetched before a rebalance, and
ack each partition up to its highest record. The app and consumer are stand-ins holding
only what the lane reads (pure batching logic; the broker tests drive the real ones)."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from weakref import WeakSet

from faust.types import TP

from streams.bulk import Chunk, Lane


class App:
    def __init__(self) -> None:
        self.consumer_generation_id = 1
        self.managed: list = []
        self.flow_control = SimpleNamespace(manage_queue=self.managed.append)
        self.consumer = SimpleNamespace(
            _unacked_messages=WeakSet(), _committed_offset=defaultdict(lambda: None),
            _acked_index=defaultdict(set), _acked=defaultdict(list), _n_acked=0,
            _waiting_for_ack=None,
            app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: True)))


def chunk(keys: list, partition: int = 0, start: int = 0, generation: int = 1) -> Chunk:
    records = [SimpleNamespace(key=k, offset=start + i, topic="t", partition=partition)
               for i, k in enumerate(keys)]
    return Chunk(TP("t", partition), records, generation)


async def _batches(chunks: list, app: App | None = None, **kwargs) -> list:
    app = app or App()
    lane = Lane(app, ["t"])
    for c in chunks:
        lane.put(c)
    total = sum(len(c.records) for c in chunks if c.generation == app.consumer_generation_id)
    out, seen = [], 0
    if total:
        async for batch in lane.batches(within=10.0, **kwargs):
            out.append(batch)
            seen += len(batch)
            if seen == total:
                break
    return out


def keys_of(batches) -> list[list]:
    return [[r.key for r in b] for b in batches]


def test_a_backlog_is_cut_at_the_batch_size_across_and_inside_chunks():
    chunks = [chunk([b"u1", b"u2"] * 10, 0, 0), chunk([b"u3"] * 45, 1, 0),
              chunk([b"u1"] * 25, 0, 20)]
    batches = asyncio.run(_batches(chunks, max_=30))
    assert [len(b) for b in batches] == [30, 30, 30]
    offsets = [(r.partition, r.offset) for b in batches for r in b]
    assert len(set(offsets)) == 90                     # every record once
    assert [o for p, o in offsets if p == 0] == list(range(45))   # in order per partition


def test_a_batch_closes_when_one_key_reaches_its_cap_whatever_the_batch_size():
    chunks = [chunk([b"busy"] * 25 + [b"a", b"b"] * 9)]
    batches = keys_of(asyncio.run(_batches(chunks, max_=1_000, per_key=10)))
    assert [len(b) for b in batches] == [10, 10, 23]
    assert batches[2].count(b"busy") == 5
    assert max(b.count(k) for b in batches for k in set(b)) <= 10


def test_a_key_cap_counts_across_chunks():
    chunks = [chunk([b"busy", b"a"] * 4, 0), chunk([b"busy"] * 5 + [b"c"], 1)]
    batches = keys_of(asyncio.run(_batches(chunks, max_=1_000, per_key=6)))
    assert [b.count(b"busy") for b in batches] == [6, 3]
    assert sum(map(len, batches)) == 14


def test_without_caps_the_queued_chunks_make_one_batch():
    chunks = [chunk([bytes([i % 7]) for i in range(200)], p) for p in range(3)]
    assert [len(b) for b in asyncio.run(_batches(chunks, max_=1_000))] == [600]


def test_a_chunk_fetched_before_a_rebalance_is_never_handed_out():
    app = App()
    app.consumer_generation_id = 2
    chunks = [chunk([b"old"] * 5, generation=1), chunk([b"new"] * 3, 0, 5, generation=2)]
    batches = keys_of(asyncio.run(_batches(chunks, app, max_=100)))
    assert batches == [[b"new"] * 3]


def test_handed_out_chunks_wait_in_the_unacked_set_until_the_batch_is_acked():
    app = App()
    chunks = [chunk([b"a"] * 4, 0, 10), chunk([b"b"] * 3, 1, 0), chunk([b"a"] * 2, 0, 14)]
    (batch,) = asyncio.run(_batches(chunks, app, max_=100))
    consumer = app.consumer
    assert len(consumer._unacked_messages) == 3
    assert batch.ack(consumer) == 9
    assert not consumer._unacked_messages
    assert dict(consumer._acked) == {TP("t", 0): [15], TP("t", 1): [2]}
    assert consumer._n_acked == 9
    assert batch.ack(consumer) == 0                   # twice changes nothing


def test_clearing_the_lane_drops_what_it_holds_and_frees_the_fetch_loop():
    async def run() -> tuple:
        app = App()
        lane = Lane(app, ["t"], limit=5)
        lane.put(chunk([b"a"] * 6))
        waiting = asyncio.ensure_future(lane.room())
        await asyncio.sleep(0.01)
        blocked = not waiting.done()
        for queue in app.managed:          # what Faust's flow_control.clear() does
            queue.clear()
        await asyncio.wait_for(waiting, 1.0)
        return blocked, lane.size, len(lane.chunks)

    assert asyncio.run(run()) == (True, 0, 0)


def test_a_capped_batch_takes_nothing_more_while_the_caller_waits():
    """streams.app._pipelined: a batch that reached a cap while the previous one is out
    stays as it was when that one is done; what came meanwhile starts the next batch."""
    async def run(per_key) -> list:
        app = App()
        lane = Lane(app, ["t"])
        lane.put(chunk([b"a"] * 6 + [b"b"] * 4))
        out: asyncio.Future = asyncio.get_running_loop().create_future()

        def pending():
            return [out] if not out.done() else []

        async def later():
            await asyncio.sleep(0.01)
            lane.put(chunk([b"a"] * 3, 0, 10))
            await asyncio.sleep(0.01)
            out.set_result(None)

        task = asyncio.ensure_future(later())
        batches = []
        async for batch in lane.batches(max_=8, within=10.0, per_key=per_key, pending=pending):
            assert all(c.records for c in batch.chunks)          # no empty chunk
            batches.append([(r.key, r.offset) for r in batch])
            if sum(map(len, batches)) == 13:
                break
        await task
        return batches

    by_size = asyncio.run(run(None))
    assert [len(b) for b in by_size] == [8, 5]
    by_key = asyncio.run(run(4))
    assert by_key[0] == [(b"a", i) for i in range(4)]
    assert max(sum(1 for k, _ in b if k == b"a") for b in by_key) <= 4
    assert sorted(o for b in by_key for _, o in b) == list(range(13))
