"""The topic catalog: partition counts follow the config; creation is idempotent."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from engine.markets import load_markets, parse_markets
from infra.settings import DEFAULT_MARKETS, Settings
from infra.topics import CATALOG, PartitionedBy, ensure_topics, plan

TWO_PAIRS = {
    "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}, "ETH": {"decimals": 8}},
    "markets": [
        {"pair": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
         "lot_size": "0.0001", "partition": 0},
        {"pair": "ETHUSDT", "base": "ETH", "quote": "USDT", "tick_size": "0.01",
         "lot_size": "0.0001", "partition": 1},
    ],
}


def test_catalog_matches_the_architecture_table():
    assert [t.short for t in CATALOG] == [
        "requests", "replies", "orders", "events", "depth", "settlements", "balances",
        "tickers", "candles", "engine.snapshots", "engine.heartbeats", "dlq"]
    compacted = {t.short for t in CATALOG if t.compacted}
    assert compacted == {"balances", "engine.snapshots"}
    by_pair = {t.short for t in CATALOG if t.partitioned_by is PartitionedBy.PAIR}
    assert {"orders", "events", "depth", "tickers", "candles"} <= by_pair


def test_partition_counts_follow_markets_and_user_setting(keel_settings):
    settings = keel_settings.with_(user_partitions=6)
    planned = {t.spec.short: t for t in plan(settings, parse_markets(TWO_PAIRS))}
    assert planned["orders"].partitions == planned["events"].partitions == 2
    assert planned["requests"].partitions == planned["balances"].partitions == 6
    assert planned["dlq"].partitions == 1
    assert planned["engine.heartbeats"].partitions == 2
    assert planned["engine.heartbeats"].config["retention.ms"] == "60000"
    assert planned["balances"].config["cleanup.policy"] == "compact"
    assert "min.insync.replicas" not in planned["orders"].config
    prod = {t.spec.short: t for t in plan(settings.with_(replication_factor=3),
                                          parse_markets(TWO_PAIRS))}
    assert prod["orders"].replication == 3
    assert prod["orders"].config["min.insync.replicas"] == "2"


def test_create_is_idempotent_on_the_real_broker(keel_settings):
    planned = plan(keel_settings, load_markets(DEFAULT_MARKETS))
    admin = AdminClient({"bootstrap.servers": keel_settings.bootstrap})
    first = ensure_topics(admin, planned)
    assert [o.status for o in first] == ["created"] * len(CATALOG)
    second = ensure_topics(admin, planned)
    assert [o.status for o in second] == ["exists"] * len(CATALOG)
    metadata = admin.list_topics(timeout=10).topics
    for t in planned:
        assert len(metadata[t.name].partitions) == t.partitions
    snapshots = keel_settings.topic("engine.snapshots")
    configs = admin.describe_configs([ConfigResource("topic", snapshots)])
    entries = next(iter(configs.values())).result()
    assert entries["cleanup.policy"].value == "compact"


def test_a_partition_count_mismatch_is_reported(keel_settings):
    admin = AdminClient({"bootstrap.servers": keel_settings.bootstrap})
    orders = keel_settings.topic("orders")
    admin.create_topics([NewTopic(orders, 1, 1)])[orders].result(10)
    outcomes = {o.name: o for o in ensure_topics(
        admin, plan(keel_settings, load_markets(DEFAULT_MARKETS)))}
    bad = outcomes[orders]
    assert bad.status == "mismatch" and not bad.ok
    assert "has 1 partitions but the config wants 3" in bad.detail
    assert all(o.ok for name, o in outcomes.items() if name != orders)


def test_the_embedded_broker_gets_back_a_topic_a_client_made_first(kafka_bootstrap, tmp_path):
    """A running client names keel.events before provisioning (a killed embedded broker
    restarted empty): tansu makes it with 4 partitions; provisioning remakes it as planned.
    Against a broker given by URL the same mismatch is refused (no topic is deleted)."""
    from confluent_kafka import Producer

    from infra.provision import ProvisionError, create_topics

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def made_by_a_client(settings: Settings) -> str:
        events = settings.topic("events")
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(events, b"x")
        assert producer.flush(10) == 0
        assert partitions(events) == 4
        return events

    def partitions(topic: str) -> int:
        return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)

    embedded = Settings(data_dir=tmp_path / "keel", topic_prefix=f"e{uuid.uuid4().hex[:8]}.",
                        embedded_kafka_port=int(kafka_bootstrap.rsplit(":", 1)[1]))
    assert embedded.embedded_kafka and embedded.bootstrap == kafka_bootstrap
    events = made_by_a_client(embedded)
    assert all(o.ok for o in create_topics(embedded))
    assert partitions(events) == 3

    by_url = embedded.with_(kafka_bootstrap=kafka_bootstrap,
                            topic_prefix=f"u{uuid.uuid4().hex[:8]}.")
    events = made_by_a_client(by_url)
    with pytest.raises(ProvisionError, match="mismatch"):
        create_topics(by_url)
    assert partitions(events) == 4


def test_keel_topics_command(keel_settings):
    env = {**os.environ, "KEEL_KAFKA_BOOTSTRAP": keel_settings.bootstrap,
           "KEEL_TOPIC_PREFIX": keel_settings.topic_prefix, "KEEL_USER_PARTITIONS": "5"}
    keel = [sys.executable, "-m", "infra.cli", "topics"]
    describe = subprocess.run([*keel, "describe"], env=env, capture_output=True, text=True)
    assert describe.returncode == 1 and "MISSING" in describe.stdout
    for _ in range(2):  # the second run finds everything in place
        create = subprocess.run([*keel, "create"], env=env, capture_output=True, text=True)
        assert create.returncode == 0, create.stderr
    assert "exists" in create.stdout and "created" not in create.stdout
    listed = subprocess.run([*keel, "list"], env=env, capture_output=True, text=True)
    assert f"{keel_settings.topic('requests')} " in listed.stdout
    assert "5 partitions" in listed.stdout
    describe = subprocess.run([*keel, "describe"], env=env, capture_output=True, text=True)
    assert describe.returncode == 0 and "MISSING" not in describe.stdout


def test_snapshot_partitions_match_pair_partitions():
    markets = load_markets(DEFAULT_MARKETS)
    planned = {t.spec.short: t.partitions for t in plan(Settings(), markets)}
    assert planned["engine.snapshots"] == planned["orders"] == markets.partitions
