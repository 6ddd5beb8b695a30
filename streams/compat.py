"""Client fixes that make aiokafka and Faust work on the embedded tansu broker.

1. InitProducerId. aiokafka only speaks version 0 of it, which has no producer_id /
   producer_epoch fields; tansu 0.6 reads them as absent and answers UNKNOWN (-1), so an
   idempotent or transactional aiokafka producer never starts (librdkafka sends v3+ and
   works). We add version 3 (flexible encoding, producer_id = epoch = -1 meaning "new
   producer"); aiokafka picks the highest version both sides support. Apache Kafka
   supports v3 since 2.5, so production is unaffected. With it, idempotence,
   transactions and Faust's exactly_once processing guarantee work on tansu.

2. Transactional sends to other topics. Under exactly_once Faust picks the transaction
   for a send by the *output* partition (`<app>-<group>-<output partition>`), which is
   only right for co-partitioned outputs such as table changelogs. For keel.orders (the
   pair's partition) or keel.settlements (another user's partition) it either finds no
   such topic in its metadata and sends outside any transaction, with the partition
   dropped (so the pair's partition was ignored), or crashes on an unknown topic group.
   A send to a topic outside the app's own groups now joins the transaction of the input
   partition being processed (`current_event()`), keeping its explicit partition, so it
   commits or aborts together with that input's offset and changelog writes.

3. The changelog buffer. Faust queues table changelog writes in a ProducerBuffer of 100
   messages; when it overflows, stream intake waits for it to "ebb". Under exactly_once
   on tansu, every run that hit that path (a few table writes per record at a few
   thousand records/s) left transactions open for good: read_committed readers of the
   outputs and changelogs saw nothing past them (reproduced with a 30-line Faust app:
   6 table writes per record, 20k records). With the bound raised out of reach, the same
   runs commit everything. streams.app.run_batches drains the buffer before each commit,
   so its size stays bounded by one batch's writes and a batch's changelog records
   commit with its offsets.

4. Table recovery ends. Under exactly_once Faust takes each changelog's end from the
   consumer's cached last-stable-offset (None, read as "empty", for a partition not yet
   fetched), and tansu answers ListOffsets(latest) with the last batch's base offset + 1
   (a topic holding 2,160 records in one batch listed its end as 1). The end of each
   changelog is now confirmed by reading its committed tail before recovery starts.
   Defensive: the SIGKILL recovery test passes with and without it.

5. Fetch wait. Faust creates its consumer with fetch_max_wait_ms=1500, and tansu holds a
   fetch for the whole wait even when records arrive meanwhile, so each hop through a
   Faust agent took ~0.75 s on average. The wait becomes a setting (default 10 ms).

6. Committable offsets. Faust commits an input partition only up to the first hole in the
   offsets it has seen acked, and fills holes from gaps it noticed between fetches; the
   commit markers of transactional writers (keel.events, and keel.settlements when it
   had several writers) left holes it did not always notice, after which it never
   committed that partition again. Keel's agents ack every record of a batch, in order,
   after the batch's state is written (streams.app.run_batches), so the committable
   offset is simply one past the highest acked.

7. Reading to the end. tansu signals "end of partition" at its listed end (the last
   batch's base + 1), before the rest of that batch; `read_to_end` reads on until the
   broker stays quiet, and table recovery (4.) uses it.

8. Changelog writes are waited for. A table write queues its changelog record in Faust's
   ProducerBuffer and drops the future; `Producer.flush()` is no proof of delivery: the
   buffer's flush returns when one record takes over 0.1 s to go out, and a record its
   sender task has already taken off the queue (size 0) but not yet handed to aiokafka is
   in neither the buffer nor aiokafka's batches. Seen in a marketdata run: after
   `app.producer.flush()` one checkpoint record of the batch was still undelivered when
   the offsets were committed; a worker stopped right then restarts from the checkpoint
   before it and skips that batch's effects for good. Every changelog record's future is
   now kept, and `changelog_written` waits for all of them (delivery or the send's
   error) before run_batches acks and commits.

9. Nothing fetched is dropped when the flow resumes. mode's FlowControlEvent.resume()
   empties every stream queue, and Faust calls it at the end of each table recovery
   right after seeking the input partitions to their committed offsets. The seek runs in
   the consumer's thread, whose fetcher at once delivers records from there into the
   queues, so the clear threw away records Faust had already marked read (and aiokafka
   had moved past): a restarted marketdata worker's second batch began 5-87 records
   further on in each partition, and the next commit passed over them for good (issue
   5: tickers short of trades; the same drop of keel.requests records would leave
   requests without replies). Records are dropped where they must be, on revoke and
   stop (Faust's explicit flow_control.clear()); whatever is queued when the flow
   resumes belongs to partitions assigned and sought from their commit, so at worst it
   is delivered twice, in order, and run_batches' consumers drop the copies.

10. Changelog records go through librdkafka. Traced per batch on the accounts worker
   (bench/streams.py --only latency, KEEL_STREAMS_TRACE): Faust's path (a ProducerBuffer
   task handing records one by one to aiokafka, which keeps one request in flight per
   broker) took 20-150 ms to make ~100-300 changelog records durable, the largest part of
   a request's latency. Outside exactly_once a table write is serialized exactly as
   Faust would (the changelog topic's own key/value serializers, the writing event's
   partition) and handed to streams.outputs' idempotent acks=all producer, whose flush
   is then the proof of durability (run_batches). Tables use the memory store, whose
   "persisted offset" bookkeeping (Faust's send callback) does nothing, so nothing is
   lost by not going through Faust. Under exactly_once the records stay in Faust's
   transactions as before.

Items 2 and 3 matter only under exactly_once, which Keel no longer uses by default
(streams.app explains why); they stay so that KEEL_STREAMS_GUARANTEE=exactly_once works
on Apache Kafka.
"""
from __future__ import annotations

import asyncio
from contextvars import ContextVar

from aiokafka.protocol import transaction as _txn
from aiokafka.protocol.api import RequestStruct, Response
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

_applied = False
fetch_max_wait_ms = 10
CHANGELOG_TIMEOUT_S = 60.0
_changelog_sent: list = []       # futures of the changelog records written since the last wait
# item 10: when set, fn(topic, key, value, partition, headers) takes table changelog
# records instead of Faust's producer (streams.app sets it outside exactly_once)
changelog_sink = None
PRODUCER_BUFFER_MAX = 10_000_000
# The input partition whose record is being processed (set by streams.app.run_batches);
# a send to a non-co-partitioned topic joins that partition's transaction.
source_tp: ContextVar = ContextVar("keel_source_tp", default=None)


class _Sent:
    """What Faust's table reads from a changelog send it did not make (item 10): the
    partition, as `fut.message.partition`."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message = self
        self.partition = partition


class InitProducerIdResponse_v3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16),
                    ("producer_id", Int64), ("producer_epoch", Int16), ("tags", TaggedFields))


class InitProducerIdRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(("transactional_id", CompactString("utf-8")),
                    ("transaction_timeout_ms", Int32), ("producer_id", Int64),
                    ("producer_epoch", Int16), ("tags", TaggedFields))


def read_to_end(consumer, topic: str, partition: int, start: int, quiet: float = 0.3):
    """Yield the offsets of the readable records of one partition from `start` to its end.

    The end is where the broker stays silent for `quiet` seconds after saying "end of
    partition": tansu 0.6 says it at its listed end (the last batch's base + 1), before
    the rest of that batch, which the next fetch still returns."""
    for msg in read_records(consumer, topic, partition, start, quiet):
        yield msg.offset()


def read_records(consumer, topic: str, partition: int, start: int, quiet: float = 0.3):
    """The records themselves (confluent_kafka Messages), as `read_to_end` reads them."""
    import time

    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    deadline, quiet_since = time.monotonic() + 10.0, None
    while True:
        msg = consumer.poll(0.05)
        now = time.monotonic()
        if msg is None:
            if quiet_since is not None and now - quiet_since >= quiet:
                return
            if quiet_since is None and now > deadline:
                raise TimeoutError(f"{topic}[{partition}]: no fetch answer while reading")
            continue
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                raise RuntimeError(f"{topic}[{partition}]: {err}")
            quiet_since = quiet_since or now
            continue
        quiet_since = None if quiet_since is None else now
        yield msg


def committed_ends(bootstrap: str, tps: list, listed: dict) -> dict:
    """For each partition, 1 + the offset of its last committed record (None if empty),
    found by reading: a window before the listed end, widened until a record shows."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keel-streams-ends",
                         "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    ends: dict = {}
    try:
        for tp in tps:
            top = listed.get(tp) or 0
            window, last = 1_000, None
            while top > 0 and last is None:
                start = max(0, top - window)
                for offset in read_to_end(consumer, tp.topic, tp.partition, start):
                    last = offset
                if start == 0:
                    break
                window *= 8
            ends[tp] = None if last is None else last + 1
    finally:
        consumer.close()
    return ends


def changelog_writer(table, records=None):
    """fn(key, value, partition) that sets `table[key] = value` and writes its changelog
    record as Faust would through `changelog_sink` (item 10), without Faust's layers
    (the table's __setitem__, its partition and sensor hooks, the serializer registry):
    py-spy put those at about half of a batch's write-back on the accounts worker, the
    rest being orjson itself. With `records`, fn(key, value) -> (key, value or None)
    pairs, the value is written as those records instead (None: a tombstone); the table
    must then read them back itself (streams.userlog.install). None (write through the
    table) when item 10 is off (exactly_once), the table expires keys (windowed), or
    Faust's bytes for a sample key and value differ from these (other serializers,
    headers)."""
    if changelog_sink is None or table._should_expire_keys():
        return None
    import orjson

    sink, topic = changelog_sink, table.changelog_topic
    name = topic.get_topic_name()
    dumps, option = orjson.dumps, orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
    key, value = "12", {"b": {"USDT": [1, -2, 3]}, "o": {}, "d": {"7": [0, "", None]},
                        "n": {"requests": 2**40}, "x": "é"}
    headers = topic.prepare_headers(None)
    want_key, headers = topic.prepare_key(key, table.key_serializer, None, headers)
    want_value, headers = topic.prepare_value(value, table.value_serializer, None, headers)
    if headers or (want_key, want_value) != (dumps(key), dumps(value, option=option)):
        return None

    def write(key, value, partition: int) -> None:
        sink(name, dumps(key), dumps(value, option=option), partition, None)
        table.data[key] = value

    def write_records(key, value, partition: int) -> None:
        for k, v in records(key, value):
            sink(name, dumps(k), None if v is None else dumps(v, option=option), partition,
                 None)
        table.data[key] = value

    if records is not None:
        return write_records

    return write


async def changelog_written(timeout: float = CHANGELOG_TIMEOUT_S) -> int:
    """Wait until every table changelog record written so far is acknowledged by the
    broker (item 8); raise the first send error, or TimeoutError. Returns how many."""
    pending = list(_changelog_sent)
    _changelog_sent.clear()
    if not pending:
        return 0
    # asyncio.wait, not wait_for(gather): a timeout must not cancel Faust's futures
    done, late = await asyncio.wait(pending, timeout=timeout)
    if late:
        raise TimeoutError(f"{len(late)} of {len(pending)} changelog records not "
                           f"acknowledged after {timeout} s")
    for fut in pending:
        fut.result()                 # raises the send's error
    return len(pending)


def apply(fetch_wait_ms: int = 10) -> None:
    """Install the fixes (idempotent); call before the Faust app starts."""
    global _applied, fetch_max_wait_ms
    fetch_max_wait_ms = fetch_wait_ms
    if _applied:
        return
    _applied = True

    request = _txn.InitProducerIdRequest
    request._CLASSES = (*request._CLASSES, InitProducerIdRequest_v3)
    build_v0 = request.build

    def build(self, struct_class):
        if struct_class is InitProducerIdRequest_v3:
            return struct_class(self._transactional_id, self._transaction_timeout_ms, -1, -1, {})
        return build_v0(self, struct_class)

    request.build = build

    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self, transport):
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms   # read by its Fetcher at start()
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer

    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = PRODUCER_BUFFER_MAX

    async def highwaters(self, partitions):
        consumer = self._ensure_consumer()
        listed = await consumer.end_offsets(partitions)
        bootstrap = ",".join(driver.server_list(self.transport.url, self.transport.default_port))
        return await asyncio.get_running_loop().run_in_executor(
            None, committed_ends, bootstrap, list(partitions), listed)

    driver.AIOKafkaConsumerThread._highwaters = highwaters

    from faust import current_event
    from faust.transport.consumer import TransactionManager

    async def send(self, topic, key, value, partition, timestamp, headers, *,
                   transactional_id=None):
        groups = self.app.assignor._topic_groups
        group_id, tid = self.app.conf.id, None
        if topic in groups:                       # co-partitioned: Faust's own rule holds
            partition = self.consumer.key_partition(topic, key, partition)
            if partition is not None:
                tid = f"{group_id}-{groups[topic]}-{partition}"
        else:
            tp = source_tp.get()
            if tp is None:
                event = current_event()
                tp = event.message.tp if event is not None else None
            if tp is not None and tp.topic in groups:
                tid = f"{group_id}-{groups[tp.topic]}-{tp.partition}"
        return await self.producer.send(topic, key, value, partition, timestamp, headers,
                                        transactional_id=tid)

    TransactionManager.send = send

    from faust.transport.consumer import Consumer

    def new_offset(self, tp):
        acked = self._acked[tp]
        if not acked:
            return None
        top = max(acked) + 1
        acked.clear()
        self._acked_index[tp].clear()
        self._gap.pop(tp, None)
        return top

    Consumer._new_offset = new_offset      # item 6

    from faust.tables.base import Collection

    send_changelog = Collection.send_changelog

    def send_changelog_kept(self, partition, key, value, key_serializer=None,
                            value_serializer=None):
        if changelog_sink is not None and partition is not None:     # item 10
            topic = self.changelog_topic
            headers = topic.prepare_headers(None)
            key, headers = topic.prepare_key(key, key_serializer or self.key_serializer,
                                             None, headers)
            value, headers = topic.prepare_value(
                value, value_serializer or self.value_serializer, None, headers)
            changelog_sink(topic.get_topic_name(), key, value, partition,
                           (list(headers.items()) if isinstance(headers, dict) else headers)
                           or None)
            return _Sent(partition)
        fut = send_changelog(self, partition, key, value, key_serializer, value_serializer)
        _changelog_sent.append(fut)
        return fut

    Collection.send_changelog = send_changelog_kept     # item 8

    from mode.utils.queues import FlowControlEvent

    def resume_keeping_queued(self) -> None:
        self._suspend.clear()
        self._resume.set()

    FlowControlEvent.resume = resume_keeping_queued     # item 9
