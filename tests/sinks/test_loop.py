"""The pipelined sink loop's ordering rules (pure logic: a scripted source, a write that
records what overlaps): offsets only after their own write, never two batches of one
partition at once, and nothing committed past a batch that was given up."""
from __future__ import annotations

import threading
import time

from sinks.loop import Backoff, SinkLoop
from sinks.metrics import SinkMetrics
from tests.sinks.feed import Message


class Source:
    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = list(batches)
        self.generation = 0
        self.commits: list[tuple[tuple[str, int], int]] = []

    def poll(self):
        return self.batches.pop(0) if self.batches else []

    @staticmethod
    def ends(msgs):
        return {(m.topic(), m.partition()): m.offset() for m in msgs}

    def commit(self, ends):
        self.commits += sorted(ends.items())
        return True

    def hold(self, seconds):
        time.sleep(min(seconds, 0.01))

    def lag(self, ask_broker=False):
        return {}


class DeadLetters:
    pending = 0

    def send(self, msg, error):  # pragma: no cover - no dead records here
        raise AssertionError("no dead letters expected")


class Store:
    """Records which batches were being written at the same time."""

    def __init__(self, slow: float = 0.05, failing: set[int] | None = None) -> None:
        self.slow = slow
        self.failing = failing or set()
        self.running: list[int] = []          # partitions being written now
        self.overlaps: list[tuple[int, ...]] = []
        self.done: list[int] = []
        self.lock = threading.Lock()

    def write(self, batch):
        key, partition = batch
        with self.lock:
            self.running.append(partition)
            self.overlaps.append(tuple(sorted(self.running)))
        try:
            time.sleep(self.slow)
            if key in self.failing:
                raise ConnectionError("store away")
            with self.lock:
                self.done.append(key)
            return type("Report", (), {"max_ts": 0})()
        finally:
            with self.lock:
                self.running.remove(partition)


def _batch(i: int, partition: int) -> list[Message]:
    return [Message("t", partition, 10 * i + k) for k in range(3)]


def _loop(source, store, stop=None):
    def prepare(msgs):
        return (msgs[0].offset() // 10, msgs[0].partition()), []
    return SinkLoop("test", source, None, store.write, (ConnectionError,), DeadLetters(),
                    SinkMetrics("test"), stop or threading.Event(), Backoff(0.001, 0.01),
                    prepare=prepare, pipeline=True, depth=2)


def test_partitions_are_written_side_by_side_one_batch_each_and_committed_in_order():
    parts = [0, 1, 0, 1, 0, 0, 1]
    source = Source([_batch(i, p) for i, p in enumerate(parts)])
    store = Store()
    loop = _loop(source, store)
    for _ in range(len(parts)):
        loop.step()
    assert loop.finish() is True
    assert sorted(store.done) == list(range(len(parts)))
    # Both partitions were in the store at once, never one partition twice.
    assert (0, 1) in store.overlaps
    assert all(len(set(o)) == len(o) for o in store.overlaps)
    # Every batch committed once, oldest first, after its own write.
    assert [o for _, o in source.commits] == [10 * i + 2 for i in range(len(parts))]


def test_a_batch_given_up_takes_the_batches_behind_it_along():
    source = Source([_batch(0, 0), _batch(1, 1), _batch(2, 0)])
    store = Store(failing={0})
    stop = threading.Event()
    loop = _loop(source, store, stop)
    loop.step()                           # batch 0 in flight (it will fail)
    loop.step()                           # batch 1 beside it (another partition)
    stop.set()                            # the retry of batch 0 gives up
    loop.step()
    loop.finish()
    assert 1 in store.done                # written (idempotent rows) ...
    assert source.commits == []           # ... but never committed past batch 0


def test_a_failed_write_is_retried_in_place_and_the_order_kept():
    source = Source([_batch(0, 0), _batch(1, 1)])
    store = Store(failing={0})
    loop = _loop(source, store)
    loop.step()
    loop.step()
    store.failing.clear()                 # the store comes back
    assert loop.finish() is True
    assert [o for _, o in source.commits] == [2, 12]


def test_the_last_offsets_read_by_runs_equal_those_read_message_by_message():
    import random

    from sinks.source import Source as KafkaSource
    rng = random.Random(3)
    for _ in range(300):
        msgs, at = [], {}
        for _ in range(rng.randrange(0, 40)):            # runs of one partition, or not
            topic, p = rng.choice("ab"), rng.randrange(3)
            for _ in range(rng.randrange(1, 5)):
                if rng.random() < 0.3:
                    topic = rng.choice("ab")             # topics mixed within a run
                at[(topic, p)] = at.get((topic, p), -1) + rng.randrange(1, 3)
                msgs.append(Message(topic, p, at[(topic, p)]))
        assert KafkaSource.ends(msgs) == {(m.topic(), m.partition()): m.offset()
                                          for m in msgs}


def test_a_lingering_source_waits_longer_only_after_a_short_poll():
    from sinks.source import Source as KafkaSource

    class Record(Message):
        def error(self):
            return None

    class Consumer:                                   # records the waits asked for
        def __init__(self, sizes):
            self.sizes, self.waits = list(sizes), []

        def consume(self, n, timeout):
            self.waits.append(timeout)
            return [Record("t", 0, i) for i in range(min(n, self.sizes.pop(0)))]

    source = object.__new__(KafkaSource)
    source.consumer = Consumer([5, 3, 5, 5, 0, 2])
    source.max_records, source.poll_timeout, source.linger = 5, 0.1, 1.0
    source.eager, source._short = False, False
    for _ in range(6):
        source.poll()
    # full (backlog) -> short (a tail) -> lingered, full -> full -> short -> lingered
    assert source.consumer.waits == [0.1, 0.1, 1.0, 0.1, 0.1, 1.0]
