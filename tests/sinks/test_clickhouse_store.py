"""The ClickHouse store on real chDB with a failing insert: whether the failed insert
reached the table or not, retrying the same batch leaves every row and candle exact."""
from __future__ import annotations

import uuid

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from engine.domain import Trade
from sinks.clickhouse import ClickHouseStore
from tests.sinks.feed import PAIRS, candles, depth_updates, engine_events


class FlakyClient:
    """The real client, except that insert number `fail_at` raises a network error,
    before or after it really happened (the ambiguous case of a lost response)."""

    def __init__(self, client, fail_at: int, applied: bool) -> None:
        self.client, self.fail_at, self.applied, self.inserts = client, fail_at, applied, 0

    def insert(self, *args, **kwargs):
        self.inserts += 1
        if self.inserts == self.fail_at:
            if self.applied:
                self.client.insert(*args, **kwargs)
            raise OperationalError("connection reset by peer")
        return self.client.insert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def database(clickhouse_client):
    name = f"sinks_{uuid.uuid4().hex[:8]}"
    clickhouse_client.command(f"CREATE DATABASE {name}")
    clickhouse_client.command(f"USE {name}")
    yield name
    clickhouse_client.command("USE default")
    clickhouse_client.command(f"DROP DATABASE {name} SYNC")


@pytest.mark.parametrize("applied", [False, True], ids=["lost-before", "lost-after"])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_retried_batch_is_stored_exactly_once(clickhouse_client, database, fail_at, applied):
    events = engine_events(1500)
    depth = depth_updates(300)
    items = [(0, PAIRS.index(e.pair), i, e) for i, e in enumerate(events)]
    items += [(1, PAIRS.index(d["pair"]), i, d) for i, d in enumerate(depth)]
    flaky = FlakyClient(clickhouse_client, fail_at, applied)
    store = ClickHouseStore(flaky, "events", "depth")
    store.ensure_schema()
    with pytest.raises(store.transient):
        store.write(items)
    store.write(items)                        # what the sink loop does after its backoff
    trades = [e for e in events if type(e) is Trade]
    rows = clickhouse_client.query("SELECT count(), uniqExact(pair, trade_id) FROM trades")
    assert rows.result_rows == [(len(trades), len(trades))]
    assert clickhouse_client.query("SELECT count() FROM depth").result_rows == [(len(depth),)]
    got = {(r[0], int(r[1])): tuple(int(v) for v in r[2:]) for r in clickhouse_client.query(
        "SELECT pair, toUnixTimestamp(bucket), open, high, low, close, volume, quote_volume, "
        "trades FROM candles_1m_final").result_rows}
    assert got == candles(trades, 60)
