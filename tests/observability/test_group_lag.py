"""GroupLag (infra/loadgen/lag.py): committed lag per group, on the real broker."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from engine.service.heartbeat import liveness_group
from infra.loadgen.lag import GroupLag


def test_groups_reading_the_same_partitions_each_get_their_lag(kafka_bootstrap):
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    for _ in range(10):
        producer.produce(topic, b"v", partition=0)
        producer.flush(10)      # one batch each: the listed end is then the true end
    for _ in range(4):
        producer.produce(topic, b"v", partition=1)
        producer.flush(10)
    # Two groups on the same partitions (as four groups read keel.events), at different
    # points; and an engine liveness group, whose "offsets" are beat stamps, not a lag.
    commits = {f"{topic}-a": [(0, 3), (1, 4)], f"{topic}-b": [(0, 10), (1, 1)],
               liveness_group(topic): [(0, 1_795_000_000_000)]}
    for group, offsets in commits.items():
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets],
                        asynchronous=False)
        consumer.close()
    lag = GroupLag(kafka_bootstrap)
    asked = []
    real = lag.consumer

    class Counting:     # the real consumer, counting the watermark queries
        def get_watermark_offsets(self, tp, **kw):
            asked.append((tp.topic, tp.partition))
            return real.get_watermark_offsets(tp, **kw)

        def close(self):
            real.close()
    lag.consumer = Counting()
    try:
        got = lag.measure()
    finally:
        lag.close()
    assert got[f"{topic}-a"] == (10 - 3) + (4 - 4)
    assert got[f"{topic}-b"] == (10 - 10) + (4 - 1)
    assert liveness_group(topic) not in got
    # Each partition's end is asked once, not once per group reading it.
    mine = [key for key in asked if key[0] == topic]
    assert sorted(mine) == [(topic, 0), (topic, 1)]
