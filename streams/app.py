"""The process's one Faust app, configured for one role (accounts, settlement, market data).

Each role is its own consumer group and changelog namespace (`<prefix>streams-<role>`), so
the roles scale and restart independently. The module-level `app` exists at import; its
settings are applied by `configure` from Keel's Settings before anything starts.

Settings that matter on the embedded broker (measured, see streams/compat.py too):
- processing_guarantee exactly_once: changelog writes, outputs and input offsets commit in
  one Kafka transaction per input partition (works on tansu with the InitProducerId fix);
- commits happen per batch from the agents (run_batches), so downstream read_committed
  consumers see outputs one batch after they were produced;
- session 6 s / heartbeat 0.5 s / rebalance 6 s: a group (re)join in ~3 s instead of ~30 s.
"""
from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from pathlib import Path

import faust
from faust.streams import _current_event

from infra.settings import Settings
from streams import compat

ROLES = ("accounts", "settlement", "marketdata")

app = faust.App("keel-streams", autodiscover=False)


def faust_settings(role: str, settings: Settings) -> dict:
    extra = settings.extra
    guarantee = extra.get("KEEL_STREAMS_GUARANTEE", "exactly_once")
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
    conf = faust_settings(role, settings)
    Path(conf["datadir"]).mkdir(parents=True, exist_ok=True)   # Faust makes only the leaf
    app.config_from_object(conf, force=True)
    app.conf.id = f"{settings.topic_prefix}streams-{role}"
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
            os._exit(0)

    def batch_committed(self) -> None:
        self.busy = False
        if self.requested:
            os._exit(0)


shutdown = Shutdown()


class Worker(faust.Worker):
    def _on_sigterm(self) -> None:
        shutdown.request()

    def _on_sigint(self) -> None:
        shutdown.request()


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


async def run_batches(stream, handle, max_batch: int = 2000, within: float = 0.05,
                      after_batch=None) -> None:
    """Feed `handle(event)` batch by batch, then ack the batch, drain Faust's changelog
    buffer and commit: the batch's outputs, changelog writes and input offsets go in one
    transaction per input partition (under exactly_once).

    The agent commits between batches instead of Faust's background timer (kept only as a
    far backstop) so that a commit never runs while the agent is still producing: on
    tansu, runs with timer commits every 50 ms left some transactions open for good.
    A batch is up to `max_batch` records or what arrived within `within` seconds.
    """
    async for events in stream.take_events(max_batch, within=within):
        shutdown.busy = True
        for event in events:
            with processing(event):
                await handle(event)
            event.ack()
        if after_batch is not None:
            await after_batch()
        buffer = app.producer.buffer
        while buffer.size:                  # the batch's changelog writes join its commit
            await buffer.flush()
        await app.consumer.commit()
        shutdown.batch_committed()


def keel_topic(settings: Settings, short: str, partitions: int):
    """A Keel topic as raw bytes (Avro framing is ours); created by `keel topics`, not Faust."""
    return app.topic(settings.topic(short), key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw", partitions=partitions,
                     internal=False)


def table(name: str, partitions: int):
    # keys and values use the app's json serializers (set in faust_settings)
    return app.Table(name, partitions=partitions)
