"""Chunked snapshots on the real broker: the newest complete one at or before an offset
is found, partial ones are skipped, and the bytes come back exactly."""
from __future__ import annotations

import hashlib
import os

from confluent_kafka import Producer

from engine.service.config import group_id
from engine.service.reader import LogReader
from engine.service.snapshots import chunk_records, find_latest, snapshot_hashes
from infra.kafka import producer_config


def _write(env, producer, input_offset: int, data: bytes, keep: int | None = None) -> None:
    records = list(chunk_records(env.codec, 0, input_offset, data,
                                 hashlib.sha256(data).hexdigest(), input_offset, 700))
    for key, value, headers in records[:keep]:
        producer.produce(env.settings.topic("engine.snapshots"), value, key, partition=0,
                         headers=headers)
    producer.flush(10)
    return len(records)


def test_latest_complete_snapshot_at_or_before_an_offset(engine_env):
    env = engine_env
    producer = Producer(producer_config(env.settings, "snapshot-test"))
    blobs = {n: os.urandom(n * 7) for n in (100, 200, 300, 400)}
    assert _write(env, producer, 100, blobs[100]) > 1          # several chunks
    _write(env, producer, 200, blobs[200])
    _write(env, producer, 300, blobs[300], keep=2)             # a writer died mid-snapshot
    reader = LogReader(env.settings, group_id(env.settings.topic_prefix))
    topic = env.settings.topic("engine.snapshots")
    try:
        assert find_latest(reader, env.codec, topic, 0).input_offset == 200
        assert find_latest(reader, env.codec, topic, 0, 250).snapshot == blobs[200]
        assert find_latest(reader, env.codec, topic, 0, 199).snapshot == blobs[100]
        assert find_latest(reader, env.codec, topic, 0, 99) is None
        assert find_latest(reader, env.codec, topic, 1) is None    # empty partition
        _write(env, producer, 400, blobs[400])
        latest = find_latest(reader, env.codec, topic, 0)
        assert latest.snapshot == blobs[400]
        assert latest.state_hash == hashlib.sha256(blobs[400]).hexdigest()
        assert sorted(snapshot_hashes(reader, topic, 0)) == [100, 200, 400]
    finally:
        reader.close()
