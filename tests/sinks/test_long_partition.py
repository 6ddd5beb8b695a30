"""The PostgreSQL sink still loads a keel.events partition too long for its fetch wait
(real broker and PostgreSQL).

tansu lists every batch of a partition for each fetch that finds data and answers nothing
when that outlasts the fetch wait (README, the embedded broker's quirks): past ~75k
batches the sinks' 50 ms wait reads nothing from the partition, ever, and a restart that
resumes from the committed offset reads nothing either. The sink must see the partition
stand still while behind and widen its wait (sinks/source.py, infra.fetchwait).

To keep the prefill short, the sink starts at a 10 ms wait on a partition of ~40k
single-record batches (a listing of ~26 ms on an idle machine): the same ratio as 50 ms
on ~200k batches. Without the widening it loaded nothing in the whole timeout.
"""
from __future__ import annotations

import psycopg

from engine.domain import Trade
from infra.settings import Settings
from schemas.codec import Codec
from sinks.source import Source
from tests.long_partition import produce_one_per_batch
from tests.sinks.feed import engine_events, postgres_sink, wait_for

OPS = 28_000            # ~40k events of one pair: one single-record batch each
FIRST_WAIT_MS = 10


def _trades(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM trades").fetchone()[0]


def test_the_postgres_sink_loads_a_partition_too_long_for_its_wait(
        kafka_bootstrap, prefix, sink_db):
    events = engine_events(OPS, pairs=("BTCUSDT",))
    trades = sum(1 for e in events if type(e) is Trade)
    assert trades and len(events) > 35_000
    codec = Codec()
    settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                  "KEEL_POSTGRES_URL": sink_db, "KEEL_TOPIC_PREFIX": prefix})
    produce_one_per_batch(kafka_bootstrap, settings.topic("events"),
                          [codec.encode_event(e) for e in events], key=b"BTCUSDT")

    source = Source(settings, prefix.rstrip(".") + "-sink-postgres",
                    [settings.topic("events")], client_id="t-sink-long", eager=True,
                    fetch_wait_ms=FIRST_WAIT_MS)
    with postgres_sink(settings, sink_db, codec, source, "t-sink-long") as runner:
        wait_for(lambda: _trades(sink_db) >= trades, timeout=90, every=0.5,
                 what="every trade of the long partition")
    assert not runner.is_alive()
    assert _trades(sink_db) == trades
    assert source.fetch_wait_ms > FIRST_WAIT_MS
