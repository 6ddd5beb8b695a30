"""A transaction's first events leave before the rest of its batch is matched (pure logic
of PartitionWorker._transact, on a recording producer: only the order of calls, no clock).

librdkafka registers a partition with the open transaction on a 1 ms timer started by the
partition's first record and sends its records only once the broker answered; with every
event produced at the end of the batch, that timer and two round trips (AddPartitionsToTxn,
Produce) followed the matching and held the commit. Producing the first events (and their
pair's depth) at once, then sending the offset, lets them run during the matching. The
events themselves must stay exactly what a clean run publishes, in order.
"""
from __future__ import annotations

from engine.markets import load_markets
from engine.service.config import EngineOptions
from engine.service.metrics import EngineMetrics
from engine.service.partition import PartitionWorker, Role
from engine.service.tools import clean_run
from engine.workload import operations, to_commands
from schemas.codec import Codec

from .conftest import MARKETS


class _Msg:
    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self):
        return None

    def partition(self) -> int:
        return 0

    def topic(self) -> str:
        return "t.orders"

    def key(self):
        return b"BTCUSDT"

    def timestamp(self):
        return (1, 0)


class _Producer:
    """Records the transactional calls, and every event record in the order produced."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.events: list[bytes] = []

    def begin_transaction(self):
        self.calls.append("begin")

    def produce_batch(self, topic, records, partition):
        self.calls.append("events")
        self.events += [r["value"] for r in records]
        return len(records)

    def produce(self, topic, value, key, partition=0, headers=None):
        self.calls.append(f"produce:{topic}")

    def send_offsets_to_transaction(self, offsets, metadata, timeout):
        self.calls.append(f"offsets:{offsets[0].offset}")

    def commit_transaction(self, timeout):
        self.calls.append("commit")


class _Book:
    """The real book, noting each command it applies in the same call log."""

    def __init__(self, book, calls: list) -> None:
        self._book, self._calls = book, calls

    def apply(self, cmd):
        self._calls.append("apply")
        return self._book.apply(cmd)

    def __getattr__(self, name):
        return getattr(self._book, name)


def test_first_events_leave_before_the_batch_is_matched(tmp_path):
    (tmp_path / "markets.toml").write_text(MARKETS)
    markets = load_markets(tmp_path / "markets.toml")
    codec = Codec()
    opts = EngineOptions(orders_topic="t.orders", events_topic="t.events",
                         depth_topic="t.depth", snapshots_topic="t.snapshots",
                         heartbeats_topic="t.heartbeats", dlq_topic="t.dlq",
                         snapshot_every=10**9, snapshot_every_s=1e9)
    pair = markets.pairs_on(0)[0].pair
    commands = list(to_commands(operations(300, seed=11), pair))
    calls: list = []
    worker = PartitionWorker(0, markets, opts, codec, EngineMetrics())
    worker.role = Role.PRIMARY
    worker.producer = _Producer(calls)
    worker.books = {p: _Book(b, calls) for p, b in worker.books.items()}
    batch = [(_Msg(i, codec.encode_command(c)), 0.0) for i, c in enumerate(commands)]

    worker._transact(batch)

    expected, _ = clean_run(markets, 0, commands, codec)
    assert worker.producer.events == expected
    assert calls[0] == "begin"
    first_events = calls.index("events")
    applied_before = calls[:first_events].count("apply")
    # The first command that has events is matched, then its events go out at once.
    assert 1 <= applied_before < len(commands) // 2
    assert calls.count("apply") == len(commands)
    # Right after those events: that pair's depth (one registration for both partitions),
    # then the offset, the batch's end, known before the rest is matched.
    # (a diff, and the pair's first full snapshot: none was published yet)
    offsets = calls.index(f"offsets:{len(commands)}")
    assert calls.count(f"offsets:{len(commands)}") == 1
    assert calls[first_events + 1:offsets] == ["produce:t.depth"] * 2
    assert calls[-1] == "commit"
    assert "produce:t.depth" in calls[offsets:-1]       # the rest's diff
