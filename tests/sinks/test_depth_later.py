"""The embedded ClickHouse sink reads a batch's depth on its reader thread, beside the next
poll: the batch's items and dead letters are the same as when read where it was polled,
and a write tried again (a store or the registry away) gives them once."""
from __future__ import annotations

import threading
import uuid

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from schemas.codec import Codec, CodecError, RegistryUnavailable
from sinks import depth_columns
from sinks.clickhouse import ClickHouseStore
from sinks.depth_native import current_header
from tests.sinks.feed import PAIRS, depth_updates


class Keyed:
    """A consumed record with a key, as confluent-kafka hands it out."""

    def __init__(self, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._p, self._o, self._k, self._v = partition, offset, key, value

    def topic(self):
        return "depth"

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v


class FailingInserts:
    """The real client, except that its first `failures` INSERT statements raise a
    network error before they run."""

    def __init__(self, client, failures: int) -> None:
        self.client, self.failures = client, failures

    def command(self, sql, *args, **kwargs):
        if sql.startswith("INSERT") and self.failures:
            self.failures -= 1
            raise OperationalError("connection reset by peer")
        return self.client.command(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def database(clickhouse_client):
    name = f"later_{uuid.uuid4().hex[:8]}"
    clickhouse_client.command(f"CREATE DATABASE {name}")
    clickhouse_client.command(f"USE {name}")
    yield name
    clickhouse_client.command("USE default")
    clickhouse_client.command(f"DROP DATABASE {name} SYNC")


def _batch(n: int) -> tuple[list, list, Keyed]:
    """n good records of partition 0 and, in partition 1, one cut short after the header
    (the walk refuses it, so its partition goes through the codec, which refuses it)."""
    codec = Codec()
    depth = [d for d in depth_updates(3 * n) if PAIRS.index(d["pair"]) == 0][:n]
    msgs = [Keyed(0, i, d["pair"].encode(), codec.encode("depth_update", d))
            for i, d in enumerate(depth)]
    other = next(d for d in depth_updates(50, seed=3) if PAIRS.index(d["pair"]) == 1)
    broken = Keyed(1, 7, b"key-of-the-broken-one",
                   current_header() + codec.encode("depth_update", other)[10:30])
    return msgs + [broken], depth, broken


def test_read_on_the_reader_thread_dead_letters_once_across_retries(
        clickhouse_client, database, monkeypatch):
    threads = []
    read = depth_columns.read

    def noting(values, header):
        threads.append(threading.current_thread())
        return read(values, header)
    monkeypatch.setattr(depth_columns, "read", noting)
    batch, depth, broken = _batch(400)
    store = ClickHouseStore(FailingInserts(clickhouse_client, 1), "events", "depth",
                            raw_depth=True)
    store.ensure_schema()
    items, dead, ends = store.prepare(Codec())(batch)
    assert [kind for kind, *_ in items] == [4]
    assert ends == {("depth", 0): len(depth) - 1, ("depth", 1): 7}
    with pytest.raises(store.transient):
        store.write(items)
    store.write(items)                        # what the loop does after its backoff
    assert threads and threading.current_thread() not in threads
    assert [(m.topic(), m.partition(), m.offset(), m.key(), m.value())
            for m, _ in dead] == [("depth", 1, 7, broken.key(), broken.value())]
    assert isinstance(dead[0][1], CodecError)
    got = clickhouse_client.query("SELECT _partition, _offset FROM depth "
                                  "ORDER BY _offset").result_rows
    assert got == [(0, i) for i in range(len(depth))]


def test_a_registry_away_during_the_read_fails_the_write_until_it_is_back(
        clickhouse_client, database, monkeypatch):
    codec = Codec()
    decode, away = codec.decode, [2]          # the reader's try and the write's first

    def flaky(name, value):
        if away[0]:
            away[0] -= 1
            raise RegistryUnavailable("registry away")
        return decode(name, value)
    monkeypatch.setattr(codec, "decode", flaky)
    batch, depth, broken = _batch(200)
    store = ClickHouseStore(clickhouse_client, "events", "depth", raw_depth=True)
    store.ensure_schema()
    items, dead, _ = store.prepare(codec)(batch)
    with pytest.raises(RegistryUnavailable):
        store.write(items)
    assert not dead and away == [0]
    store.write(items)
    assert [(m.offset(), m.value()) for m, _ in dead] == [(7, broken.value())]
    assert clickhouse_client.query("SELECT count() FROM depth").result_rows == [(len(depth),)]
