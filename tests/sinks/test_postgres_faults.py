"""The PostgreSQL sink under faults: SIGKILL mid-batch, again and again, and a database
that goes away for 30 s under load. Nothing is lost, nothing is doubled."""
from __future__ import annotations

import random
import signal
import threading
import time

import psycopg

from engine.domain import Trade
from infra.embedded import free_port
from infra.embedded.postgres import spawn, wait_ready
from infra.embedded.postgres import stop as stop_postgres
from infra.migrate import migrate
from infra.postgres import ensure_database
from schemas.codec import Codec
from tests.sinks.feed import (
    PAIRS,
    caught_up,
    engine_events,
    expected_orders,
    produce,
    sink_process,
    stop,
    wait_for,
)

PARTITION = {pair: i for i, pair in enumerate(PAIRS)}


def _encoded(events):
    codec = Codec()
    return [(e.pair, codec.encode_event(e)) for e in events]


def _one(dsn: str, sql: str):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _check_store(dsn: str, events) -> None:
    trades = [e for e in events if type(e) is Trade]
    assert _one(dsn, "SELECT count(*), count(DISTINCT (pair, trade_id)), sum(qty) FROM trades") \
        == (len(trades), len(trades), sum(t.qty for t in trades))
    with psycopg.connect(dsn) as conn:
        got = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT pair, order_id, status, filled_qty, filled_quote, remaining FROM orders")}
    assert got == expected_orders(events)


def test_sigkill_mid_batch_repeatedly_loses_and_doubles_nothing(
        kafka_bootstrap, prefix, sink_db, tmp_path):
    events = engine_events(265_000, seed=11)
    n_trades = sum(1 for e in events if type(e) is Trade)
    assert n_trades >= 100_000
    topic, group = prefix + "events", prefix.rstrip(".") + "-sink-postgres"
    ends = produce(kafka_bootstrap, topic, _encoded(events), PARTITION)
    env = {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_POSTGRES_URL": sink_db,
           "KEEL_TOPIC_PREFIX": prefix, "KEEL_LOG_LEVEL": "INFO",
           # a SIGKILLed sink's partitions come back after the session: keep it short
           "KEEL_KAFKA_SESSION_TIMEOUT_MS": "3000"}
    done = caught_up(kafka_bootstrap, group, topic, ends)
    rng = random.Random(5)
    count = "SELECT count(*) FROM trades"
    kills, progress = 0, []
    proc = sink_process("postgres", env, tmp_path / "sink.log")
    try:
        # Kill at fixed shares of the load, so every kill lands mid-run however fast the
        # sink is; right after a commit the next batch is usually in flight.
        for share in range(1, 7):
            wait_for(lambda m=n_trades * share // 8: _one(sink_db, count)[0] >= m,
                     timeout=300, every=0.02, what=f"{share}/8 of the trades")
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
            progress.append(_one(sink_db, count)[0])
            proc = sink_process("postgres", env, tmp_path / "sink.log")
        wait_for(done, timeout=600, what="the sink to finish after the kills")
    finally:
        assert stop(proc) == 0
    assert kills == 6
    assert progress == sorted(progress) and progress[-1] < n_trades  # killed before the end
    _check_store(sink_db, events)


def test_postgres_down_for_30s_under_load_catches_up_with_nothing_lost(
        kafka_bootstrap, prefix, tmp_path):
    port = free_port()
    data_dir = tmp_path / "pg"
    log = open(tmp_path / "pg.log", "ab")  # noqa: SIM115 - closed below
    dsn = f"postgresql://postgres@127.0.0.1:{port}/keel"
    pg = spawn(data_dir, port, stdout=log)
    proc = None
    try:
        wait_ready(dsn, pg)
        ensure_database(dsn)
        migrate(dsn)
        events = engine_events(60_000, seed=3)
        encoded = _encoded(events)
        topic, group = prefix + "events", prefix.rstrip(".") + "-sink-postgres"
        metrics_port = free_port()
        env = {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_POSTGRES_URL": dsn,
               "KEEL_TOPIC_PREFIX": prefix, "KEEL_LOG_LEVEL": "INFO",
               "KEEL_METRICS_PORT_BASE": str(metrics_port)}
        proc = sink_process("postgres", env, tmp_path / "sink.log")
        ends: dict[int, int] = {}
        third = len(encoded) // 3
        ends.update(produce(kafka_bootstrap, topic, encoded[:third], PARTITION))
        wait_for(lambda: _one(dsn, "SELECT count(*) FROM trades")[0] > 0, what="first rows")

        # Load keeps coming while the database is away.
        def load():
            for i in range(third, len(encoded), 2000):
                ends.update(produce(kafka_bootstrap, topic, encoded[i:i + 2000], PARTITION))
                time.sleep(0.5)
        loader = threading.Thread(target=load)
        stop_postgres(pg)
        down_at = time.monotonic()
        loader.start()
        time.sleep(20)
        during = _metrics(metrics_port)
        time.sleep(10)
        assert proc.poll() is None, "the sink must wait for the database, not die"
        assert during['keel_sink_store_up{sink="postgres"}'] == 0
        assert during['keel_sink_retries_total{sink="postgres"}'] >= 1
        pg = spawn(data_dir, port, stdout=log)
        wait_ready(dsn, pg)
        loader.join()
        assert time.monotonic() - down_at >= 30
        wait_for(caught_up(kafka_bootstrap, group, topic, ends), timeout=300,
                 what="the sink to catch up after the outage")
        _check_store(dsn, events)
        retried = (tmp_path / "sink.log").read_text().count("store unavailable, retrying")
        assert retried >= 1
        after = wait_for(lambda: (m := _metrics(metrics_port)) and all(
            v == 0 for k, v in m.items() if k.startswith("keel_sink_lag_records")) and m,
            what="the lag metric back to 0")
        assert after['keel_sink_store_up{sink="postgres"}'] == 1
        assert any(k.startswith("keel_sink_lag_records") for k in after)
    finally:
        if proc is not None:
            assert stop(proc) == 0
        stop_postgres(pg)
        log.close()
