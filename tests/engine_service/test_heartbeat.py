"""Primary liveness as committed beats (engine/service/heartbeat.py), on the real broker."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from engine.service.config import EngineOptions
from engine.service.heartbeat import Heartbeats
from infra.kafka import consumer_config

from .conftest import wait_for

INTERVAL = 0.05


@pytest.fixture
def pair(engine_env):
    """(options, primary, watcher): two started instances over partitions 0 and 1."""
    opts = EngineOptions.from_settings(engine_env.settings)
    started = []
    try:
        for _ in range(2):
            beats = Heartbeats(engine_env.settings, opts.heartbeats_topic, opts.group_id,
                               [0, 1], INTERVAL)
            started.append(beats)
            beats.start()
        yield opts, *started
    finally:
        for beats in started:
            beats.close()


def _high(env, topic: str, partition: int) -> int:
    consumer = Consumer(consumer_config(env.settings, None, "t-high"))
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                                 cached=False)
        return high
    finally:
        consumer.close()


def test_beats_are_seen_and_write_no_record(engine_env, pair):
    opts, primary, watcher = pair
    for _ in range(int(1.0 / INTERVAL)):
        primary.lead([0])
        time.sleep(INTERVAL)
    # Partition 0 is led: the watcher saw its beats, and a fresh start sees a live
    # primary. Partition 1 is not: no beat, no live primary.
    assert watcher.other_live(0, 0.5)
    assert not watcher.other_live(1, 60)
    # The primary does not take its own beats for another instance's.
    assert not primary.other_live(0, 60)
    fresh = Heartbeats(engine_env.settings, opts.heartbeats_topic, opts.group_id, [0, 1])
    try:
        fresh.refresh()
        assert fresh.live_primary(0, 1.0)
        assert not fresh.live_primary(1, 1.0)
    finally:
        fresh.close()
    # The liveness lives in the coordinator, not in the log: the topic stays empty, so
    # nothing grows however long the primary runs.
    assert _high(engine_env, opts.heartbeats_topic, 0) <= 0


def test_a_stuck_loop_stops_the_beats(pair):
    _, primary, watcher = pair
    primary.lead([0])
    wait_for(lambda: watcher.other_live(0, 0.5), 10, "the watcher to see a beat", 0.02)
    # No lead() for a while (the engine's loop is stuck): the beat thread stops beating,
    # and the watcher hears silence growing (a thread beating regardless never lets it
    # pass 0.3 s: it beats every 0.05 s).
    wait_for(lambda: watcher.silent_for(0) > 0.3, 10, "the beats to stop", 0.02)
    primary.lead([0])
    wait_for(lambda: watcher.silent_for(0) < 0.3, 10, "the beats to resume", 0.02)
