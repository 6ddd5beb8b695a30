"""The gateway's feed does not widen its fetch wait behind an open transaction (real broker).

A read_committed reader cannot read past a transaction that is still open: when the
engine dies inside one, nothing on that partition is readable until its next instance
fences the old producer (the supervisor's restart, or a standby's takeover). The records
of the open transaction are already in the log, so measured against the high watermark
the feed looks behind and standing still — what the starvation rule (infra.fetchwait)
takes for tansu starving it. Widened waits are never narrowed, so each engine outage
longer than the rule's checks would add latency to every order for as long as the
gateway runs. Measured against the last stable offset the feed is at the end: no widening.
"""
from __future__ import annotations

import asyncio
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.feed import CATCH_UP_WAIT_MS, LAG_CHECK_S, LIVE_WAIT_MS, STARVED_CHECKS, Feed
from infra.settings import Settings
from schemas.codec import Codec
from tests.gateway.test_feed_long_partition import Replies, _reply, _until, live_feed


def test_an_open_transaction_does_not_widen_the_live_feed(kafka_bootstrap):
    settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                  "KEEL_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}."})
    topic = settings.topic("replies")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    codec = Codec()
    producer = Producer({"bootstrap.servers": kafka_bootstrap,
                         "transactional.id": f"t-open-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, _reply(codec, "before"), partition=0)
    producer.commit_transaction(10)
    replies = Replies()

    async def scenario() -> Feed:
        async with live_feed(settings, codec, replies, "t-feed-open-txn", 60) as feed:
            await _until(lambda: "before" in replies.seen, 30, "the committed reply")
            # The engine dies here: its transaction stays open, its records in the log.
            producer.begin_transaction()
            for i in range(3):
                producer.produce(topic, _reply(codec, f"open-{i}"), partition=0)
            assert producer.flush(10) == 0
            await asyncio.sleep(LAG_CHECK_S * (STARVED_CHECKS + 3))
            assert not replies.seen & {"open-0", "open-1", "open-2"}
            # Its next instance fences it: the transaction is aborted, traffic goes on.
            producer.abort_transaction(10)
            producer.begin_transaction()
            producer.produce(topic, _reply(codec, "after"), partition=0)
            producer.commit_transaction(10)
            await _until(lambda: "after" in replies.seen, 30, "the reply after the abort")
        return feed

    feed = asyncio.run(scenario())
    # (tansu 0.6 then shows the aborted records too, a quirk the engine handles when it
    # takes over, README; Apache Kafka hides them. Not this test's subject.)
    assert {"before", "after"} <= replies.seen
    assert (feed.live_wait_ms, feed.catch_up_wait_ms) == (LIVE_WAIT_MS, CATCH_UP_WAIT_MS)
