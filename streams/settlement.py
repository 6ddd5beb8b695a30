"""settlement: engine events -> per-user settlement records (`keel streams settlement`).

Reads keel.events (read_committed, as the engine writes it in transactions) partition by
partition; streams.settle holds the rules, a changelog table its state (each live order's
hold, written once per batch after the batch's records are delivered). Writes
keel.settlements on each user's partition.
"""
from __future__ import annotations

from engine.domain import ResultCode
from engine.markets import MarketsConfig
from infra.settings import Settings
from schemas.codec import Codec, CodecError
from streams.app import app, emit, keel_topic, run_batches, table
from streams.dlq import dead_letter
from streams.keys import user_key, user_partition
from streams.metrics import StreamMetrics
from streams.settle import Settlement
from streams.staged import Staged
from streams.units import Units


def register(settings: Settings, markets: MarketsConfig, metrics: StreamMetrics) -> None:
    codec = Codec.from_settings(settings)
    n_users = settings.user_partitions
    events = keel_topic(settings, "events", markets.partitions)
    settlements = keel_topic(settings, "settlements", n_users)
    dlq = keel_topic(settings, "dlq", 1)
    units = Units.from_markets(markets)
    live = Staged(table("live", markets.partitions))
    rules = Settlement(units, live=live)

    async def reject(message, code: int, reason: str) -> None:
        await emit(dlq, key=message.topic.encode(),
                   value=dead_letter(codec, message, reason, code, "settlement"))
        metrics.dead_letters.inc()

    async def handle(event) -> None:
        message = event.message
        try:
            engine_event = codec.decode_event(message.value)
        except CodecError as exc:
            return await reject(message, exc.code, exc.reason)
        if engine_event.pair not in units.pairs:
            return await reject(message, ResultCode.UNKNOWN_PAIR,
                                f"unknown pair {engine_event.pair}")
        for record in rules.settle(engine_event):
            uid = record["user_id"]
            # built by streams.settle from a decoded event in integer arithmetic: no schema
            # check (fastavro's validation builds error objects for each union branch it
            # tries: 33 us a record against 6 without; the writer still refuses a bad type)
            await emit(settlements, key=user_key(uid),
                       value=codec.encode("settlement", record, validate=False),
                       partition=user_partition(uid, n_users))
            metrics.outputs.inc()
        metrics.inputs.inc()

    @app.agent(events, name="settlement")
    async def settle(stream):
        await run_batches(stream, handle, staged=(live,))
