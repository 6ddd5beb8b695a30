"""streams.batches.take_batches' closing rules on a backlog: the batch size cap and the cap
on one key's records (accounts: a user's requests, whose decisions it keeps for two
batches). The stream is a stand-in for Faust's (pure batching logic; the broker tests
drive the real one): it hands records to the processors one by one, as Faust's passive
drainer does."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.batches import take_batches


class Channel:
    def __aiter__(self):
        return self

    async def __anext__(self):
        raise StopAsyncIteration


class Backlog:
    """A stream whose records are all there at once (a drain)."""

    def __init__(self, keys: list) -> None:
        self.records = [SimpleNamespace(message=SimpleNamespace(key=k, offset=i))
                        for i, k in enumerate(keys)]
        self.channel = Channel()                 # no queue: "something may be queued"
        self.enable_acks = True
        self.should_stop = False
        self.current_event = None
        self._processors: list = []
        self.feeder: asyncio.Task | None = None

    def add_processor(self, fn) -> None:
        self._processors.append(fn)

    def _enable_passive(self, _channel) -> None:
        self.feeder = asyncio.ensure_future(self._feed())

    async def _feed(self) -> None:
        for record in self.records:
            self.current_event = record
            for fn in self._processors:
                await fn(record)
        self.current_event = None

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            self.should_stop = True          # the backlog is drained: end the test


async def _batches(keys: list, **kwargs) -> list[list]:
    stream = Backlog(keys)
    sizes = []
    async for batch in take_batches(stream, within=10.0, ack=False, **kwargs):
        sizes.append([event.message.key for event in batch])
        if sum(map(len, sizes)) == len(keys):
            break
    stream.feeder.cancel()
    return sizes


def test_a_backlog_is_cut_at_the_batch_size():
    batches = asyncio.run(_batches([b"u1", b"u2"] * 50, max_=30))
    assert [len(b) for b in batches] == [30, 30, 30, 10]


def test_a_batch_closes_when_one_key_reaches_its_cap_whatever_the_batch_size():
    keys = [b"busy"] * 25 + [b"a", b"b"] * 9
    batches = asyncio.run(_batches(keys, max_=1_000, per_key=10))
    assert [len(b) for b in batches] == [10, 10, 23]
    assert batches[2].count(b"busy") == 5            # the rest of it, with the others
    assert max(b.count(k) for b in batches for k in set(b)) <= 10


def test_without_a_key_cap_many_keys_share_one_large_batch():
    keys = [bytes([i % 7]) for i in range(200)]
    batches = asyncio.run(_batches(keys, max_=1_000))
    assert [len(b) for b in batches] == [200]
