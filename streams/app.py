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

import asyncio
import logging
import os
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import faust
from faust.streams import _current_event

from infra.logs import event as log_event
from infra.settings import Settings
from streams import bulk, compat, fastpath, lifecycle, trace, tuning
from streams.acks import ack_batch
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
    tuning.apply(app, settings)     # GIL switch, GC thresholds, no Faust Monitor
    compat.apply(int(settings.extra.get("KEEL_STREAMS_FETCH_WAIT_MS", "10")))
    fastpath.install()              # records reach the streams without 4 tasks each
    bulk.install()                  # ... or an agent's Lane takes whole fetches
    conf = faust_settings(role, settings)
    Path(conf["datadir"]).mkdir(parents=True, exist_ok=True)   # Faust makes only the leaf
    app.config_from_object(conf, force=True)
    app.conf.id = f"{settings.topic_prefix}streams-{role}"
    lifecycle.install(app, role)    # INFO: assignments, recovery done
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
    processed are uncommitted and go to the partition's next owner. With batches
    pipelined (two may be in flight: one committing, the next being delivered), the
    process ends when the last of them has committed.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_flight = 0          # batches whose state or outputs may be on their way

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    def batch_started(self) -> None:
        """The batch's first write to the broker is about to be made."""
        self.in_flight += 1

    def request(self) -> None:
        self.requested = True
        if not self.busy:
            _leave_group()
            _exit(0)

    def batch_committed(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.requested and not self.busy:
            _leave_group()
            _exit(0)

    def batch_failed(self) -> None:
        """A batch raised: end the process, uncommitted. Faust would restart the agent on
        the same stream, which never hands out the batch's records again, and the next
        batch's commit would pass over them: their effects lost for good. The partitions'
        next owner (this worker restarted) replays from the last commit instead."""
        _exit(1)


def _leave_group(timeout_s: float = 2.0) -> None:
    """A worker stopping cleanly leaves its consumer group first, so the partitions' next
    owner is assigned at once. Exiting without it, the group waited out the 6 s session: a
    successor started its partitions ~11 s after a SIGTERM. aiokafka's own leave skips a
    generation of 0, which is tansu's first, so the request is sent here (from the
    consumer's thread, as aiokafka would). Best effort: a worker that cannot say goodbye
    in time exits anyway, as a killed one does."""
    from aiokafka.protocol.group import LeaveGroupRequest

    try:
        thread = app.consumer._thread
        coordinator = thread._consumer._coordinator
        member = coordinator.member_id
        if not member:
            return                          # never joined: nothing to leave
        request = LeaveGroupRequest(coordinator.group_id, member)
        asyncio.run_coroutine_threadsafe(coordinator._send_req(request),
                                         thread.thread_loop).result(timeout_s)
        log_event(log, "left the consumer group", generation=coordinator.generation)
    except Exception as exc:  # noqa: BLE001 - exiting anyway
        log_event(log, "left without LeaveGroup", error=repr(exc))


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


_outputs: list = []        # (topic, send arguments) of the batch being handled
_producers: dict = {}      # "outputs" / "changelog" -> streams.outputs.Outputs, made on use
_names: dict = {}          # Faust topic -> its one topic name


async def emit(topic, key=None, value=None, partition=None, headers=None) -> None:
    """Queue an output record; run_batches sends the batch's outputs together, before or
    after the batch's state as the agent asks, and commits only once they are delivered."""
    _outputs.append((topic, key, value, partition, headers))


def queue(topic, key=None, value=None, partition=None, headers=None) -> None:
    """`emit` without a coroutine per record (accounts emits three per request)."""
    _outputs.append((topic, key, value, partition, headers))


def queued() -> list:
    """The list `queue` appends to (the same list for the life of the process): an agent
    that emits several records per input appends its (topic, key, value, partition,
    headers) tuples itself, without a call per record (accounts)."""
    return _outputs


def _take_outputs() -> list:
    """The outputs emitted so far, handed to their batch; later emits start anew."""
    outputs = _outputs.copy()
    _outputs.clear()
    return outputs


def _librdkafka(kind: str = "outputs"):
    """The process's streams.outputs.Outputs for `kind`: one for outputs, one for table
    changelogs, so that waiting for one batch's state does not wait for the previous
    batch's outputs too (a flush waits for everything its producer holds; _pipelined)."""
    sender = _producers.get(kind)
    if sender is None:
        from streams.outputs import Outputs

        bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)
        sender = _producers[kind] = Outputs(bootstrap, f"{app.conf.id}-{kind}")
    return sender


def _produce_changelog(topic: str, key, value, partition: int, headers) -> None:
    _librdkafka("changelog").produce(topic, key, value, partition, headers)


def _exactly_once() -> bool:
    return app.conf.processing_guarantee.value == "exactly_once"


async def _changelog_durable() -> None:
    """Every table changelog record written so far is acknowledged (compat items 8, 10)."""
    if compat.changelog_sink is not None and "changelog" in _producers:
        await _producers["changelog"].flush()
    await app.producer.flush()           # Faust's own (exactly_once, or a stray write)
    await compat.changelog_written()     # flush() alone is no proof (compat item 8)


async def _send_outputs(outputs: list, batch: trace.Batch) -> None:
    """Send a batch's outputs and wait until all are acknowledged (streams.outputs says
    why librdkafka). Under exactly_once they go through Faust, inside its transactions."""
    if not outputs:
        return
    if _exactly_once():
        import asyncio

        sent = [await topic.send(key=key, value=value, partition=partition, headers=headers)
                for topic, key, value, partition, headers in outputs]
        await app.producer.flush()
        await asyncio.gather(*sent)          # raises if a send failed: nothing commits
        return
    sender = _librdkafka()
    produce, names = sender.producer.produce, _names
    for topic, key, value, partition, headers in outputs:
        name = names.get(topic)
        if name is None:
            name = names[topic] = topic.get_topic_name()
        try:        # sender.produce without its call: ~1 us a record less
            if headers is None:     # headers=None itself costs ~0.5 us (librdkafka, isolated)
                produce(name, value, key, -1 if partition is None else partition)
            else:
                produce(name, value, key, -1 if partition is None else partition,
                        headers=headers)
        except BufferError:
            sender.produce(name, key, value, partition, headers)    # waits for room
    batch.mark("produce")
    await sender.flush()


async def run_batches(stream, handle, max_batch: int = 2000, within: float = 0.05,
                      staged=(), after_batch=None, state_first: bool = False,
                      pipelined: bool = True, per_key: int | None = None,
                      backlog: tuple[int, float] | None = None,
                      lane: bulk.Lane | None = None, overlap_from: int = 0) -> None:
    """Feed `handle(event)` batch by batch, then write the batch's outputs and its table
    state (the `staged` tables, then `after_batch`), each waited for until durable, and
    only then ack the events and commit their offsets. A crash at any point loses nothing.

    Outputs go first by default: a crash before the state is written replays the batch
    against the old state, which gives the same outputs again for an agent with one input
    partition (settlement, market data), and their consumers drop the copies. With
    `state_first` (accounts, whose two inputs may interleave differently when replayed)
    the state goes first and a replayed record rebuilds its outputs from it; such a run
    is pipelined (`_pipelined`) outside exactly_once, unless `pipelined` is False.

    The agent commits between batches (Faust's timer is only a far backstop) and acks
    only after everything is written, so a commit on rebalance never runs ahead of it.
    The table state counts as written once every one of its changelog records is
    acknowledged (compat item 8), and a batch that raises ends the process uncommitted
    (Shutdown.batch_failed). A batch is up to `max_batch` records, closed as soon as no
    more arrive (streams.batches), at most `within` seconds after its first record (or
    `backlog`'s seconds once it holds `backlog`'s count), or when `per_key` of its
    records share a key. With a `lane` (streams.bulk) the batches are taken from it,
    whole fetches, instead of from `stream` record by record, and `handle` is given each
    record (an aiokafka ConsumerRecord) instead of an event, and must not wait.
    """
    trace.install_dump(app)
    if not _exactly_once():
        # Made now, not at the first batch: an idempotent producer sends nothing until
        # the broker has given it a producer id, 0.5-1.0 s after it is made on tansu
        # (measured 2026-11-22); that wait fell on the first batch after every (re)start. By
        # the time the group is joined and the tables recovered, both have their ids.
        _librdkafka("outputs")
        if compat.changelog_sink is not None:
            _librdkafka("changelog")
    if trace.enabled() and lane is None:
        stream.add_processor(trace.stamp(stream))
    if state_first and pipelined and not _exactly_once():
        return await _pipelined(stream, handle, max_batch, within, staged, after_batch,
                                per_key, backlog, lane, overlap_from)
    batch = trace.Batch()
    committing = None       # the previous batch's offset commit, when left running
    if lane is None:
        batches = take_batches(stream, max_batch, within, per_key=per_key, backlog=backlog)
    else:
        batches = lane.batches(max_batch, within, per_key=per_key, backlog=backlog,
                               stopped=lambda: stream.should_stop)
    async for events in batches:
        shutdown.batch_started()
        try:
            committing = await _complete(events, handle, staged, after_batch, state_first,
                                         batch, committing)
        except Exception:
            _failed(events)
        if committing is None:
            batch.closed(events)
            shutdown.batch_committed()
        batch = trace.Batch()


# How long handling may keep the event loop before it lets other tasks run (a pipelined
# batch's next round trip starts only when its task gets the loop: _pipelined).
YIELD_EVERY_S = 0.001


async def _handle(events, handle, batch: trace.Batch) -> None:
    batch.mark("close")
    generation = app.consumer_generation_id
    if isinstance(events, bulk.Taken):
        await _handle_chunks(events, handle)
    else:
        await _handle_events(events, handle)
    batch.mark("handle")
    if app.consumer_generation_id != generation:
        log.warning("batch spans a rebalance", extra={"fields": {
            "events": len(events), "generation": [generation, app.consumer_generation_id]}})


async def _handle_events(events, handle) -> None:
    set_event, reset_event = _current_event.set, _current_event.reset
    set_source, reset_source = compat.source_tp.set, compat.source_tp.reset
    clock = time.perf_counter
    due = clock() + YIELD_EVERY_S
    for i, event in enumerate(events, 1):
        # `processing(event)` inlined: its context manager cost ~2 us a record
        current, source = set_event(weakref.ref(event)), set_source(event.message.tp)
        try:
            await handle(event)
        finally:
            reset_source(source)
            reset_event(current)
        if not i & 15 and clock() > due:
            # `handle` never waits, so without this a batch holds the loop from its first
            # record to its last: a flush that ends meanwhile would wake its task only then
            await asyncio.sleep(0)
            due = clock() + YIELD_EVERY_S


async def _handle_chunks(taken: bulk.Taken, handle) -> None:
    """_handle for a Lane's batch: a chunk's records share one partition, so the
    current event (what table writes and sends read it from) is set once a chunk, and
    `handle(record)` is a plain call (it never waits)."""
    clock = time.perf_counter
    due = clock() + YIELD_EVERY_S
    for chunk in taken.chunks:
        current = _current_event.set(weakref.ref(chunk))
        source = compat.source_tp.set(chunk.tp)
        try:
            for i, record in enumerate(chunk.records, 1):
                handle(record)
                if not i & 63 and clock() > due:
                    # as _handle: let a flush that ended meanwhile wake its task
                    await asyncio.sleep(0)
                    due = clock() + YIELD_EVERY_S
        finally:
            compat.source_tp.reset(source)
            _current_event.reset(current)


def _ack(events) -> None:
    if isinstance(events, bulk.Taken):
        events.ack(app.consumer)
    else:
        ack_batch(app.consumer, events)


async def _write_state(staged, after_batch, batch: trace.Batch) -> None:
    """Hand the batch's table state to the changelog producer (not yet waited for)."""
    for table in staged:
        table.write_back(processing)
    if after_batch is not None:
        await after_batch()
    batch.mark("write_back")


async def _complete(events, handle, staged, after_batch, state_first: bool,
                    batch: trace.Batch, committing):
    """Handle one batch and make it durable; then commit its offsets. Outside
    exactly_once the commit is left running (returned, a task that ends the batch) while
    the next batch is handled and written: it covers only this batch's offsets, all
    durable by now, and the next batch's commit waits for it (Faust skips a commit asked
    for during another). This takes one broker round trip off every batch's path.
    `committing` is the previous batch's commit task, or None."""
    await _handle(events, handle, batch)
    outputs = _take_outputs()
    if not state_first:
        await _send_outputs(outputs, batch)
        batch.mark("outputs")
    await _write_state(staged, after_batch, batch)
    await _changelog_durable()
    batch.mark("changelog_wait")
    if state_first:
        await _send_outputs(outputs, batch)
        batch.mark("outputs")
    _ack(events)
    if committing is not None:
        await committing
    if _exactly_once():        # the commit ends the transaction the next batch writes in
        await app.consumer.commit()
        batch.mark("commit")
        return None
    return asyncio.ensure_future(_commit(events, batch))


async def _commit(events, batch: trace.Batch) -> None:
    """A durable batch's offset commit, left running by run_batches (see _complete)."""
    try:
        await app.consumer.commit()
        batch.mark("commit")
        batch.closed(events)
    except Exception:
        _failed(events)
    shutdown.batch_committed()


async def _pipelined(stream, handle, max_batch, within, staged, after_batch,
                     per_key=None, backlog=None, lane=None, overlap_from: int = 0) -> None:
    """run_batches for a state-first agent, pipelined: while one batch makes its round
    trips to the broker (its state made durable, then its outputs sent and acknowledged,
    then its offsets committed), the next is gathered and handled, and its state is
    made durable while the previous batch's outputs are on their way.

    Traced on the accounts worker (bench/streams.py, KEEL_STREAMS_TRACE), the three
    round trips were a batch's largest share of time at 2,000 requests/s, records
    arriving meanwhile waited for all of them, and the worker did nothing else. What
    keeps a crash harmless is unchanged, per batch: its state is durable before any of
    its outputs is sent, its offsets are acked and committed only after its outputs are
    acknowledged, and its outputs follow the previous batch's (one producer for outputs,
    in order per partition; states likewise on the changelog producer). Handling touches
    only memory (the Staged tables' pending writes, the outputs list). Batch N+1's state
    is written once N's is durable and N-1's outputs are acknowledged: the ledger keeps
    the decisions (`d`) of the batch in hand and the one before, so a durable state
    never lacks one that the replay of a batch whose outputs may be undelivered (N)
    would need. A batch's commit is left running while the next is written; that one's
    commit waits for it (Faust skips a commit asked for during another).

    Until those two are done the batch in the making stays open (take_batches' `pending`):
    it would wait for them anyway, and a record arriving meanwhile joins it instead of
    waiting for the next write.

    Only a batch of at least `overlap_from` records (a backlog's) has the next one taken
    while its round trips run; after a smaller one (a live stream's) the next is taken
    once its outputs are acknowledged, and closes by the idle rule, as run_batches'
    sequential batches do.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    done: asyncio.Task | None = None            # the last batch's delivery and commit
    durable = None                              # the last batch's state durable
    delivered = [None, None]                    # the last two batches' outputs acknowledged
    batch = trace.Batch()
    overlapping = overlap_from <= 0             # the next batch is taken while one is out

    def pending() -> list | None:
        """What the next batch's state must wait for: gathering goes on meanwhile (None:
        nothing is out, a batch closes as a sequential one does)."""
        if not overlapping:
            return None
        return [f for f in (durable, delivered[0]) if f is not None and not f.done()]

    if lane is None:
        batches = take_batches(stream, max_batch, within, ack=False, pending=pending,
                               per_key=per_key, backlog=backlog)
    else:
        batches = lane.batches(max_batch, within, per_key=per_key, backlog=backlog,
                               pending=pending, stopped=lambda: stream.should_stop)
    async for events in batches:
        try:
            await _handle(events, handle, batch)
        except Exception:
            _failed(events)
        outputs = _take_outputs()
        for waited in (durable, delivered[0]):
            if waited is not None:
                await waited
        shutdown.batch_started()
        try:
            await _write_state(staged, after_batch, batch)
        except Exception:
            _failed(events)
        durable, mine = loop.create_future(), loop.create_future()
        done = asyncio.ensure_future(_deliver(stream, events, outputs, batch, durable,
                                              delivered[1], mine, done))
        delivered = [delivered[1], mine]
        batch = trace.Batch()
        overlapping = len(events) >= overlap_from
        if not overlapping:
            await mine


async def _deliver(stream, events, outputs, batch: trace.Batch, durable, before, delivered,
                   previous) -> None:
    """The pipelined batch's round trips, in their crash-safe order (see _pipelined):
    `before` is the previous batch's outputs acknowledged, `previous` its commit."""
    try:
        await _changelog_durable()
        batch.mark("changelog_wait")
        durable.set_result(None)
        if before is not None:
            await before
        await _send_outputs(outputs, batch)
        batch.mark("outputs")
        delivered.set_result(None)
        _ack(events)
        if previous is not None:
            await previous
    except Exception:
        _failed(events)
        shutdown.batch_committed()
        return
    await _commit(events, batch)


def _failed(events) -> None:
    log.exception("batch failed, exiting uncommitted", extra={"fields": {
        "events": len(events), "first": _where(events[0]), "last": _where(events[-1])}})
    shutdown.batch_failed()


def _where(event) -> str:
    message = getattr(event, "message", event)      # a Faust event, or a lane's record
    return f"{message.topic}[{message.partition}]@{message.offset}"


def keel_topic(settings: Settings, short: str, partitions: int):
    """A Keel topic as raw bytes (Avro framing is ours); created by `keel topics`, not Faust."""
    return app.topic(settings.topic(short), key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw", partitions=partitions,
                     internal=False)


def table(name: str, partitions: int):
    # keys and values use the app's json serializers (set in faust_settings)
    return app.Table(name, partitions=partitions)

