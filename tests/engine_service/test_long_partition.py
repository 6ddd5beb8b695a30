"""A live engine on a long keel.orders partition still reads what arrives, and its log
reader (snapshots, tails) still reads a long partition.

tansu's memory engine lists every batch of a partition on each fetch that finds data, and
a listing that outlasts the fetch wait returns nothing (README, the embedded broker's
quirks): a partition of ~20k small batches (what a low-rate accounts worker leaves after
some hours) is past the live wait's horizon. The engine must notice that it makes no
progress while behind and widen its wait (engine.service.fetchwait), not sit there until
1,000 orders have piled up behind it.
"""
from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from engine.service.config import EngineOptions
from engine.service.reader import FIRST_WAIT_MS, LogReader
from engine.workload import operations, to_commands
from infra.kafka import consumer_config
from tests.long_partition import produce_one_per_batch

from .conftest import log_of, wait_for

BATCHES = 20_000        # single-record batches before the engine starts
LATE = 20               # commands sent once it is live: far below the 1,000-record lag rule


def _produce_one_per_batch(env, commands, topic: str | None = None) -> None:
    produce_one_per_batch(env.settings.bootstrap, topic or env.settings.topic("orders"),
                          (env.codec.encode_command(c) for c in commands), key=b"BTCUSDT")


def _committed(env) -> int:
    group = EngineOptions.from_settings(env.settings).group_id
    consumer = Consumer(consumer_config(env.settings, group, "t-long-committed"))
    try:
        [tp] = consumer.committed([TopicPartition(env.settings.topic("orders"), 0)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def test_a_live_engine_keeps_reading_a_long_partition(engine_env, spawn_engine):
    env = engine_env
    commands = list(to_commands(operations(BATCHES + LATE, seed=41), "BTCUSDT"))
    _produce_one_per_batch(env, commands[:BATCHES])
    proc = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) >= BATCHES, 120, "the backlog to be read")
    wait_for(lambda: "consumer fetch wait switched" in log_of(proc), 60,
             "the switch to the live fetch wait")
    _produce_one_per_batch(env, commands[BATCHES:])
    wait_for(lambda: _committed(env) >= BATCHES + LATE, 30,
             "the commands sent after going live")
    assert "fetch wait widened" in log_of(proc)
    proc.terminate()
    assert proc.wait(30) == 0


def test_the_log_reader_reads_the_end_of_a_long_partition(engine_env):
    # 30k single-record batches: a listing of ~20 ms on an idle machine, past what a
    # 10 ms wait ever gets an answer for (it timed out: "no fetch response for the high
    # watermark"), well within 50 ms.
    env = engine_env
    topic = env.settings.topic("depth")
    commands = list(to_commands(operations(30_000, seed=43), "BTCUSDT"))
    _produce_one_per_batch(env, commands, topic)
    reader = LogReader(env.settings, EngineOptions.from_settings(env.settings).group_id)
    try:
        tail = reader.tail(topic, 0, 5)
        assert [m.offset() for m in tail[-5:]] == list(range(29_995, 30_000))
        assert tail[-1].value() == env.codec.encode_command(commands[-1])
        assert reader.wait_ms > FIRST_WAIT_MS
    finally:
        reader.close()
