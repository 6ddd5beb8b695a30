"""The embedded services answer, and a record round-trips through the real broker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from engine.domain import Trade
from infra.embedded import free_port
from infra.kafka import LIBRDKAFKA_LOGGER, consumer_config, producer_config
from infra.settings import Settings
from schemas.codec import Codec


def test_a_trade_round_trips_through_the_broker(make_topic, kafka_bootstrap):
    topic = make_topic(partitions=2)
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    codec = Codec()
    trade = Trade("BTCUSDT", 4, 1_717_000_000_123, 1, 6_500_000, 3, 1, 101, 7, 102, 8, 20, 40)
    producer = Producer(producer_config(settings, client_id="test"))
    producer.produce(topic, key=b"BTCUSDT", value=codec.encode_event(trade), partition=1)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(settings, group_id=f"g-{topic}"))
    consumer.subscribe([topic])
    try:
        msg = None
        deadline = time.monotonic() + 30
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                pytest.fail(str(msg.error()))
        assert msg is not None, "nothing consumed"
        assert (msg.key(), msg.partition()) == (b"BTCUSDT", 1)
        assert codec.decode_event(msg.value()) == trade
    finally:
        consumer.close()


def test_postgres_answers_and_is_18(postgres_dsn):
    with psycopg.connect(postgres_dsn) as conn:
        one, version = conn.execute("SELECT 1, current_setting('server_version_num')::int"
                                    ).fetchone()
    assert one == 1
    assert version // 10000 == 18


def test_clickhouse_answers_and_stores(clickhouse_client):
    assert clickhouse_client.query("SELECT 1").result_rows == [(1,)]
    clickhouse_client.command("CREATE TABLE IF NOT EXISTS t_answer (n UInt64) "
                              "ENGINE = MergeTree ORDER BY n")
    clickhouse_client.insert("t_answer", [[7], [8]], column_names=["n"])
    assert clickhouse_client.query("SELECT sum(n) FROM t_answer").result_rows == [(15,)]


def test_clickhouse_owner_serves_ping_and_queries(tmp_path):
    """`keel services clickhouse` owns the chDB dir; others query it over loopback HTTP."""
    port = free_port()
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path),
           "KEEL_EMBEDDED_CLICKHOUSE_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "services", "clickhouse"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        settings = Settings.from_env(env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    assert r.read() == b"Ok.\n"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "owner never answered /ping"
                time.sleep(0.2)
        from infra.clickhouse import ClickHouseError, query, rows

        query(settings, "CREATE TABLE depth (pair String, seq UInt64) "
                        "ENGINE = MergeTree ORDER BY (pair, seq)")
        query(settings, "INSERT INTO depth VALUES ('BTCUSDT', 1), ('BTCUSDT', 2)")
        assert rows(settings, "SELECT pair, max(seq) AS s FROM depth GROUP BY pair") == [
            {"pair": "BTCUSDT", "s": 2}]
        with pytest.raises(ClickHouseError, match="(?i)unknown|doesn't exist|does not exist"):
            query(settings, "SELECT * FROM no_such_table")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert (tmp_path / "clickhouse").is_dir()


def test_postgres_service_creates_keel_database(tmp_path):
    """`keel services postgres` initialises its dir, creates `keel` and stops on SIGTERM."""
    port = free_port()
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path),
           "KEEL_EMBEDDED_POSTGRES_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "services", "postgres"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dsn = Settings.from_env(env).postgres_dsn
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    assert conn.execute("SELECT current_database()").fetchone() == ("keel",)
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "postgres never accepted connections"
                time.sleep(0.2)
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


def test_kafka_client_configs_are_exactly_once_ready():
    settings = Settings(kafka_bootstrap="broker:9092")
    prod = producer_config(settings, transactional_id="engine-0", linger_ms=0,
                           error_cb=print)
    assert prod["bootstrap.servers"] == "broker:9092"
    assert prod["enable.idempotence"] is True and prod["acks"] == "all"
    assert prod["transactional.id"] == "engine-0" and prod["linger.ms"] == 0
    assert prod["error_cb"] is print
    cons = consumer_config(settings, group_id="sink")
    assert cons["isolation.level"] == "read_committed"
    assert cons["enable.auto.commit"] is False and cons["group.id"] == "sink"
    # plain values only, but for the logger librdkafka's own lines go through
    assert cons["logger"] is prod["logger"] is LIBRDKAFKA_LOGGER
    assert json.dumps({k: v for k, v in cons.items() if k != "logger"})
