"""The gateway's feed, live on a long partition, still reads what arrives (real broker).

tansu lists every batch of a partition for each fetch that finds data and answers nothing
when that outlasts the fetch wait: keel.replies after some hours at a low rate is past
what the feed's 5 ms live wait gets an answer for, and a reply or two behind never reach
its 5,000-record lag rule, so every order would time out waiting for its reply. The feed
must see the partition stand still while behind and widen its waits (infra.fetchwait).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager

from confluent_kafka.admin import AdminClient, NewTopic

from gateway.feed import LIVE_WAIT_MS, Feed
from infra.settings import Settings
from schemas.codec import Codec
from tests.long_partition import produce_one_per_batch

BATCHES = 20_000


class Replies:
    """Stands in for the gateway's fold: records the replies the feed hands over."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_reply(self, rec: dict) -> None:
        self.seen.add(rec["request_id"])


def _reply(codec: Codec, request_id: str) -> bytes:
    return codec.encode("reply", {"request_id": request_id, "user_id": 1, "ts": 1, "code": 0,
                                  "message": "", "pair": None, "order_id": None,
                                  "client_order_id": None})


def _produce_one_per_batch(settings: Settings, values) -> None:
    produce_one_per_batch(settings.bootstrap, settings.topic("replies"), values)


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def live_feed(settings: Settings, codec: Codec, replies: Replies, client_id: str,
                    ready_s: float):
    """A started Feed once it has read every partition to its end and gone live;
    stopped on exit."""
    feed = Feed(settings, codec, replies, client_id=client_id)
    feed.start()
    try:
        await asyncio.wait_for(feed.ready.wait(), ready_s)
        await _until(lambda: feed.live, 30, "the live fetch wait")
        yield feed
    finally:
        feed.stop()


def test_a_live_feed_keeps_reading_a_long_partition(kafka_bootstrap):
    settings = Settings.from_env({"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                  "KEEL_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}."})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(settings.topic("replies"), 1, 1)])[
        settings.topic("replies")].result(10)
    codec = Codec()
    _produce_one_per_batch(settings, (_reply(codec, f"old-{i}") for i in range(BATCHES)))
    replies = Replies()

    async def scenario() -> Feed:
        async with live_feed(settings, codec, replies, "t-feed-long", 120) as feed:
            assert len(replies.seen) == BATCHES
            _produce_one_per_batch(settings, [_reply(codec, "late")])
            await _until(lambda: "late" in replies.seen, 40, "the reply sent after going live")
        return feed

    feed = asyncio.run(scenario())
    assert feed.live_wait_ms > LIVE_WAIT_MS
