"""A writer that died mid-transaction: whatever the broker does with its open transaction
(Apache Kafka aborts it when the next writer fences and hides it from read_committed
readers; tansu 0.6.0 aborts it but keeps its records visible), the restarted engine
publishes every event exactly once."""
from __future__ import annotations

from confluent_kafka import Producer

from engine.service.config import transactional_id
from engine.service.tools import clean_run, produce_commands
from engine.workload import operations, to_commands
from infra.kafka import producer_config

from .checks import assert_depth_chain, assert_seq_contiguous, published_events
from .conftest import log_of, wait_for


def test_events_of_an_unfinished_transaction_are_not_published_twice(engine_env, spawn_engine):
    env = engine_env
    commands = list(to_commands(operations(10_000, seed=23), "BTCUSDT"))
    expected, _ = clean_run(env.markets, 0, commands, env.codec)
    first_half, _ = clean_run(env.markets, 0, commands[:5_000], env.codec)
    produce_commands(env.settings, env.codec, 0, commands[:5_000])
    engine = spawn_engine("--partitions", "0")
    wait_for(lambda: len(published_events(env, 0)) >= len(first_half), 120, "the first half")
    engine.terminate()
    assert engine.wait(30) == 0
    produce_commands(env.settings, env.codec, 0, commands[5_000:])

    # A "crashed" writer: it published the next 300 commands' events in a transaction
    # that never committed, nor committed their input offsets.
    upto, _ = clean_run(env.markets, 0, commands[:5_300], env.codec)
    ghost = Producer(producer_config(env.settings, "ghost", transactional_id=transactional_id(
        0, env.settings.topic_prefix)))
    ghost.init_transactions(30)
    ghost.begin_transaction()
    for value in upto[len(first_half):]:
        ghost.produce(env.settings.topic("events"), value, b"BTCUSDT", partition=0)
    ghost.flush(30)

    engine = spawn_engine("--partitions", "0")          # fences the ghost
    wait_for(lambda: len(published_events(env, 0)) >= len(expected), 120, "every event")
    engine.terminate()
    assert engine.wait(30) == 0
    values = published_events(env, 0)
    assert_seq_contiguous(env, values)
    assert values == expected
    assert_depth_chain(env, 0, {"BTCUSDT": env.codec.decode_event(values[-1]).seq})
    exposed = "caught up with the published tail" in log_of(engine)
    print(f"broker exposed the fenced transaction: {exposed}")
