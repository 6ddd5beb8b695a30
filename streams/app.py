"""The process's one Faust app, configured for one role (accounts, settlement, market data).

Each role is its own consumer group and changelog namespace (`<prefix>streams-<role>`), so
the roles scale and restart independently. The module-level `app` exists at import; its
settings are applied by `configure` from Keel's Settings before anything starts.

Settings that matter on the embedded broker (measured, see streams/compat.py too):
- processing_guarantee at_least_once, with exactly-once effects built in (run_batches):
  per batch the outputs and the table state are made durable in an order that lets a
  replay after a crash repeat only what consumers drop (the engine a command it has
  seen, accounts a settlement `(pair, seq)` or a request offset it has applied), then
  the input offsets are committed. Faust's exactly_once mode was tried first: on tansu 0.6 its
  transactions stopped committing (offsets of a restarted worker's transactions never
  reached the group, outputs of an idle worker stayed in an open transaction);
- inputs are read read_uncommitted, Faust's default outside exactly_once: tansu 0.6 cut
  read_committed reads of plain-written changelogs short (a restarted worker recovered
  stale tables). keel.events is written in engine transactions; an aborted stretch is
  written again with the same (pair, seq) and bytes (the engine is deterministic), and
  settlement and market data drop a seq they have applied;
- commits happen per batch from the agents (run_batches);
- session 6 s / heartbeat 0.5 s / rebalance 6 s: a group (re)join in ~3 s instead of ~30 s.
"""
from __future__ import annotations

import logging
import os
import weakref
from contextlib import contextmanager
from pathlib import Path

import faust
from faust.streams import _current_event

from infra.settings import Settings
from streams import compat, fastpath, trace
from streams.batches import take_batches

ROLES = ("accounts", "settlement", "marketdata")
log = logging.getLogger(__name__)

app = faust.App("keel-streams", autodiscover=False)


def faust_settings(role: str, settings: Settings) -> dict:
    extra = settings.extra
    guarantee = extra.get("KEEL_STREAMS_GUARANTEE", "at_least_once")
    return {
        "broker": [f"kafka://{host}" for host in settings.bootstrap.split(",")],
        "store": "memory://",          # tables are rebuilt from their changelog on start
        "processing_guarantee": guarantee,
        # Agents commit after each batch (run_batches); the timer is only a backstop.
        "broker_commit_interval": float(extra.get("KEEL_STREAMS_COMMIT_INTERVAL", "3600")),
        "topic_replication_factor": settings.replication_factor,
        "topic_partitions": settings.user_partitions,
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 0.5,
        "broker_rebalance_timeout": 6.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "web_enabled": False,
        "key_serializer": "json",
        "value_serializer": "json",
        "datadir": str(settings.data_dir / "streams" / role),
    }


def configure(role: str, settings: Settings) -> faust.App:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    compat.apply(int(settings.extra.get("KEEL_STREAMS_FETCH_WAIT_MS", "10")))
    fastpath.install()              # records reach the streams without 4 tasks each
    conf = faust_settings(role, settings)
    Path(conf["datadir"]).mkdir(parents=True, exist_ok=True)   # Faust makes only the leaf
    app.config_from_object(conf, force=True)
    app.conf.id = f"{settings.topic_prefix}streams-{role}"
    # table changelogs through librdkafka (compat item 10), not inside exactly_once's
    # transactions
    compat.changelog_sink = None if conf["processing_guarantee"] == "exactly_once" \
        else _produce_changelog
    return app


class Shutdown:
    """A SIGTERM/SIGINT ends the process right after the batch in hand has committed.

    Faust's own stop stops the transactional producers before its final commit, which
    then fails and leaves the last transaction open; tansu later commits such an open
    transaction together with the next owner's first one, so its outputs would appear
    twice. Exiting between batches leaves nothing open: records fetched but not yet
    processed are uncommitted and go to the partition's next owner.
    """

    def __init__(self) -> None:
        self.requested = False
        self.busy = False

    def request(self) -> None:
        self.requested = True
        if not self.busy:
            _exit(0)

    def batch_committed(self) -> None:
        self.busy = False
        if self.requested:
            _exit(0)

    def batch_failed(self) -> None:
        """A batch raised: end the process, uncommitted. Faust would restart the agent on
        the same stream, which never hands out the batch's records again, and the next
        batch's commit would pass over them: their effects lost for good. The partitions'
        next owner (this worker restarted) replays from the last commit instead."""
        _exit(1)


def _exit(code: int) -> None:
    import sys

    # os._exit skips the interpreter's flush: Faust logs to a buffered stdout
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110 - exiting anyway
            pass
    os._exit(code)


shutdown = Shutdown()


class Worker(faust.Worker):
    def _on_sigterm(self) -> None:
        shutdown.request()

    def _on_sigint(self) -> None:
        shutdown.request()

    def on_setup_root_logger(self, logger, level: int) -> None:
        # mode points the root logger at a buffered stdout in its own format; Keel's
        # processes log JSON lines to stderr (and a worker that exits leaves its last words)
        from infra.logs import setup_logging

        setup_logging(logging.getLevelName(level), process="streams")


@contextmanager
def processing(event):
    """Make `event` current: table writes go to its partition's changelog and sends to
    other topics join its partition's transaction."""
    current = _current_event.set(weakref.ref(event))
    source = compat.source_tp.set(event.message.tp)
    try:
        yield
    finally:
        compat.source_tp.reset(source)
        _current_event.reset(current)


_outputs: list = []        # (topic, send arguments) of the batch in hand
_sender = None             # streams.outputs.Outputs, made on the first batch with outputs
_names: dict = {}          # Faust topic -> its one topic name


async def emit(topic, key=None, value=None, partition=None, headers=None) -> None:
    """Queue an output record; run_batches sends the batch's outputs together, before or
    after the batch's state as the agent asks, and commits only once they are delivered."""
    _outputs.append((topic, key, value, partition, headers))


def _librdkafka():
    """The process's one streams.outputs.Outputs (outputs and table changelogs)."""
    global _sender
    if _sender is None:
        from streams.outputs import Outputs

        bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)
        _sender = Outputs(bootstrap, f"{app.conf.id}-outputs")
    return _sender


def _produce_changelog(topic: str, key, value, partition: int, headers) -> None:
    _librdkafka().produce(topic, key, value, partition, headers)


async def _changelog_durable() -> None:
    """Every table changelog record written so far is acknowledged (compat items 8, 10)."""
    if compat.changelog_sink is not None and _sender is not None:
        await _sender.flush()
    await app.producer.flush()           # Faust's own (exactly_once, or a stray write)
    await compat.changelog_written()     # flush() alone is no proof (compat item 8)


async def _send_outputs() -> None:
    """Send the batch's outputs and wait until all are acknowledged (streams.outputs says
    why librdkafka). Under exactly_once they go through Faust, inside its transactions."""
    if not _outputs:
        return
    if app.conf.processing_guarantee.value == "exactly_once":
        import asyncio

        sent = [await topic.send(key=key, value=value, partition=partition, headers=headers)
                for topic, key, value, partition, headers in _outputs]
        _outputs.clear()
        await app.producer.flush()
        await asyncio.gather(*sent)          # raises if a send failed: nothing commits
        return
    sender = _librdkafka()
    produce = sender.produce
    for topic, key, value, partition, headers in _outputs:
        name = _names.get(topic)
        if name is None:
            name = _names[topic] = topic.get_topic_name()
        produce(name, key, value, partition, headers)
    _outputs.clear()
    trace.mark("produce")
    await sender.flush()


async def run_batches(stream, handle, max_batch: int = 2000, within: float = 0.05,
                      staged=(), after_batch=None, state_first: bool = False) -> None:
    """Feed `handle(event)` batch by batch, then write the batch's outputs and its table
    state (the `staged` tables, then `after_batch`), each waited for until durable, and
    only then ack the events and commit their offsets. A crash at any point loses nothing.

    Outputs go first by default: a crash before the state is written replays the batch
    against the old state, which gives the same outputs again for an agent with one input
    partition (settlement, market data), and their consumers drop the copies. With
    `state_first` (accounts, whose two inputs may interleave differently when replayed)
    the state goes first and a replayed record rebuilds its outputs from it.

    The agent commits between batches (Faust's timer is only a far backstop) and acks
    only after everything is written, so a commit on rebalance never runs ahead of it.
    The table state counts as written once every one of its changelog records is
    acknowledged (compat item 8), and a batch that raises ends the process uncommitted
    (Shutdown.batch_failed). A batch is up to `max_batch` records, closed as soon as no
    more arrive (streams.batches), at most `within` seconds after its first record.
    """
    _install_task_dump()
    if trace.enabled():
        stream.add_processor(trace.stamp(stream))
    trace.opened()
    async for events in take_batches(stream, max_batch, within):
        shutdown.busy = True
        try:
            await _complete(events, handle, staged, after_batch, state_first)
            trace.closed(events)
        except Exception:
            log.exception("batch failed, exiting uncommitted", extra={"fields": {
                "events": len(events), "first": _where(events[0]), "last": _where(events[-1])}})
            shutdown.batch_failed()
        shutdown.batch_committed()


async def _complete(events, handle, staged, after_batch, state_first: bool) -> None:
    mark = trace.mark
    mark("close")
    generation = app.consumer_generation_id
    for event in events:
        with processing(event):
            await handle(event)
    mark("handle")
    if app.consumer_generation_id != generation:
        log.warning("batch spans a rebalance", extra={"fields": {
            "events": len(events), "generation": [generation, app.consumer_generation_id]}})
    if not state_first:
        await _send_outputs()
        mark("outputs")
    for table in staged:
        table.write_back(processing)
    if after_batch is not None:
        await after_batch()
    mark("write_back")
    await _changelog_durable()
    mark("changelog_wait")
    if state_first:
        await _send_outputs()
        mark("outputs")
    for event in events:
        event.ack()
    await app.consumer.commit()
    mark("commit")


def _where(event) -> str:
    message = event.message
    return f"{message.topic}[{message.partition}]@{message.offset}"


def _install_task_dump() -> None:
    """SIGUSR1 writes every asyncio task's stack and the consumer's offset books to
    stderr: what an operator needs to see where a live worker waits."""
    import asyncio
    import signal
    import sys

    def dump() -> None:
        out = sys.stderr
        for task in asyncio.all_tasks():
            print(f"--- task {task.get_name()}", file=out)
            task.print_stack(limit=12, file=out)
        consumer = app.consumer
        for name in ("_committed_offset", "_read_offset", "_gap", "_active_partitions",
                     "_buffered_partitions", "_paused_partitions", "flow_active"):
            print(f"--- consumer.{name}: {getattr(consumer, name, None)}", file=out)
        for topic in app.topics:
            queue = getattr(topic, "_queue", None)
            if queue is not None:
                print(f"--- queue {topic}: size {queue.qsize()} pending "
                      f"{len(queue._pending_pressure_drop_callbacks)} "
                      f"high {queue.pressure_high_size} drop {queue.pressure_drop_size}",
                      file=out)
        acked = {tp: (len(v), min(v), max(v)) for tp, v in consumer._acked.items() if v}
        print(f"--- consumer._acked (n, min, max): {acked}", file=out)
        out.flush()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)


def keel_topic(settings: Settings, short: str, partitions: int):
    """A Keel topic as raw bytes (Avro framing is ours); created by `keel topics`, not Faust."""
    return app.topic(settings.topic(short), key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw", partitions=partitions,
                     internal=False)


def table(name: str, partitions: int):
    # keys and values use the app's json serializers (set in faust_settings)
    return app.Table(name, partitions=partitions)

