"""Primary liveness: a beat every ~100 ms per owned partition, as a committed offset.

A primary beats by committing, for each partition it owns, the wall-clock millisecond as
the "offset" of that partition of keel.engine.heartbeats in a group nobody joins (the
engine group's name + "-liveness"). A commit overwrites one value per partition and
reading it back is one lookup, so a beat costs the same after a month as after a second.
Beats used to be records on the topic: tansu's memory engine lists every batch of a
partition on each fetch that finds data and gives up when the listing outlasts the fetch
wait, so after ~40k beats (about an hour) a watcher saw none and a standby took over a
live primary. The topic still names the partitions; nothing is written to it.

A beat is told from one's own by its stamp: each instance remembers the stamps it wrote
(tansu keeps a commit's metadata but never returns it, so the instance id it carries is
only for operators looking at a Kafka cluster's groups).

Liveness is judged by when a new beat was *seen here* (monotonic clock), so clock skew
between hosts never matters; only the start-up check compares a beat's stamp with the
wall clock, to tell a live primary from an old beat. A thread beats and watches, so the
engine's loop never waits on the coordinator; the loop only says, every turn, which
partitions it leads, and a loop that stops turning stops the beats.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

from confluent_kafka import Consumer, KafkaException, TopicPartition

from infra.kafka import consumer_config
from infra.settings import Settings

log = logging.getLogger(__name__)
TIMEOUT = 2.0       # one commit or read; a broker slower than this counts as silence
LIVENESS_SUFFIX = "-liveness"
MINE = 256          # own stamps remembered: far more than are written between two reads


def liveness_group(group_id: str) -> str:
    return f"{group_id}{LIVENESS_SUFFIX}"


def is_liveness_group(group: str) -> bool:
    """A beats group: its committed "offsets" are stamps, not positions (no lag)."""
    return group.endswith(LIVENESS_SUFFIX)


class Heartbeats:
    def __init__(self, settings: Settings, topic: str, group_id: str, partitions: list[int],
                 interval: float = 0.1, clock=time.monotonic) -> None:
        self.topic = topic
        self.instance = uuid.uuid4().hex[:12]
        self.interval = interval
        self.clock = clock
        self._primaries: list[int] = []     # what the owner's loop last said it leads
        self._led_at = float("-inf")
        self._consumer = Consumer(consumer_config(
            settings, liveness_group(group_id), f"keel-engine-beat-{self.instance}"))
        self._lock = threading.Lock()       # the thread and the owner's refresh() share it
        now = clock()
        self.last_seen: dict[int, float] = dict.fromkeys(partitions, now)
        self.other_at: dict[int, float] = dict.fromkeys(partitions, float("-inf"))
        self._latest: dict[int, int] = {}           # partition -> last stamp read
        self._mine: deque[int] = deque(maxlen=MINE)   # stamps this instance wrote
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Read the beats as they stand (the baseline), then beat and watch in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="keel-engine-beats",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT * 2 + 1)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a missed beat is silence, not a crash
                log.debug("beat failed: %s", exc)
            self._consumer.poll(0)      # hands librdkafka's log lines over
            self._stop.wait(self.interval)

    def lead(self, partitions: list[int]) -> None:
        """Called by the owner's loop on every turn: the partitions it is primary for. A
        loop that stops turning stops the beats, as it did when the loop beat itself."""
        self._primaries = list(partitions)
        self._led_at = self.clock()

    def beat(self) -> None:
        partitions = self._primaries
        if not partitions or self.clock() - self._led_at > 2 * self.interval:
            return
        stamp = int(time.time() * 1000)
        self._mine.append(stamp)
        with self._lock:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, stamp,
                                                          metadata=self.instance)
                                           for p in partitions], asynchronous=False)

    def read(self) -> dict[int, int]:
        """partition -> stamp (wall ms) of the last beat; -1 when none."""
        with self._lock:
            got = self._consumer.committed(
                [TopicPartition(self.topic, p) for p in self.last_seen], timeout=TIMEOUT)
        out = {}
        for tp in got:
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[tp.partition] = max(tp.offset, -1)
        return out

    def refresh(self) -> None:
        """Note beats from other instances written since the last look."""
        now = self.clock()
        for p, stamp in self.read().items():
            if self._latest.get(p) == stamp:
                continue
            first = p not in self._latest
            self._latest[p] = stamp
            if first or stamp < 0 or stamp in self._mine:
                continue
            self.last_seen[p] = self.other_at[p] = now

    def silent_for(self, partition: int) -> float:
        return self.clock() - self.last_seen[partition]

    def other_live(self, partition: int, within: float) -> bool:
        """Another instance beat for `partition` within the last `within` seconds."""
        return self.clock() - self.other_at[partition] < within

    def mark_alive(self, partition: int) -> None:
        """Give a partition's primary the full grace period from now."""
        self.last_seen[partition] = self.clock()

    def live_primary(self, partition: int, within_s: float) -> bool:
        """True when another instance's last beat for `partition` was written within
        `within_s` (wall clock): at start-up, a live primary is not taken over."""
        stamp = self._latest.get(partition, -1)
        return (stamp > 0 and stamp not in self._mine
                and time.time() * 1000 - stamp <= within_s * 1000)


def ensure_heartbeat_topic(settings: Settings, topic: str, partitions: int) -> None:
    """Create the beat topic when missing (one partition per engine partition). Its
    partitions carry the committed beats; no record is written to it."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    from infra.kafka import admin_client

    admin = admin_client(settings)
    if topic in admin.list_topics(timeout=10).topics:
        return
    config = {"cleanup.policy": "delete", "retention.ms": "60000", "segment.ms": "60000"}
    future = admin.create_topics([NewTopic(topic, partitions, settings.replication_factor,
                                           config=config)])[topic]
    try:
        future.result(10)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
