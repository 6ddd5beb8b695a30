"""market data: rolling 24 h tickers and 1-minute candles (`keel streams marketdata`).

Reads keel.events (read_committed) by pair partition; streams.market holds the rules.
Each pair's state is checkpointed in a changelog table once per batch (not per trade),
after the batch's outputs are delivered and before its offsets are committed, so a
restarted worker resumes from its last checkpoint and events it sees again (seq at or
below the checkpoint's) change nothing.
"""
from __future__ import annotations

from engine.domain import ResultCode
from engine.markets import MarketsConfig
from infra.settings import Settings
from schemas.codec import Codec, CodecError
from streams.app import app, emit, keel_topic, processing, run_batches, table
from streams.dlq import dead_letter
from streams.market import PairStats
from streams.metrics import StreamMetrics


def register(settings: Settings, markets: MarketsConfig, metrics: StreamMetrics) -> None:
    codec = Codec.from_settings(settings)
    home = {m.pair: m.partition for m in markets.markets.values()}
    events = keel_topic(settings, "events", markets.partitions)
    tickers = keel_topic(settings, "tickers", markets.partitions)
    candles = keel_topic(settings, "candles", markets.partitions)
    dlq = keel_topic(settings, "dlq", 1)
    checkpoints = table("pairs", markets.partitions)
    stats: dict[str, PairStats] = {}
    touched: dict[str, tuple] = {}           # pair -> (an event of it, its state) this batch

    def stats_for(pair: str) -> PairStats:
        s = stats.get(pair)
        if s is None:
            saved = checkpoints.get(pair)
            s = stats[pair] = PairStats.load(pair, saved) if saved else PairStats(pair)
        return s

    async def reject(message, code: int, reason: str) -> None:
        await emit(dlq, key=message.topic.encode(),
                   value=dead_letter(codec, message, reason, code, "marketdata"))
        metrics.dead_letters.inc()

    async def handle(event) -> None:
        message = event.message
        try:
            ev = codec.decode_event(message.value)
        except CodecError as exc:
            return await reject(message, exc.code, exc.reason)
        if ev.pair not in home:
            return await reject(message, ResultCode.UNKNOWN_PAIR, f"unknown pair {ev.pair}")
        state = stats_for(ev.pair)
        ticker, new_candles = state.apply(ev)
        key, partition = ev.pair.encode(), home[ev.pair]
        # Tickers and candles are built by streams.market from decoded events in integer
        # arithmetic: no schema check before writing (fastavro's validation built error
        # objects for the union branches it tried, ~3 a record: 2/3 of the CPU left per
        # event after streams.market stopped rescanning its window). The writer still
        # refuses a value of the wrong type.
        if ticker is not None:
            await emit(tickers, key=key, value=codec.encode("ticker", ticker, validate=False),
                       partition=partition)
        for candle in new_candles:
            await emit(candles, key=key, value=codec.encode("candle", candle, validate=False),
                       partition=partition)
        touched[ev.pair] = (event, state)
        metrics.inputs.inc()

    async def checkpoint() -> None:
        # the state the batch folded its events into, even if a revoke emptied `stats`
        for pair, (event, state) in touched.items():
            with processing(event):          # the pair's partition's changelog
                checkpoints[pair] = state.dump()
        touched.clear()

    @app.on_partitions_revoked.connect
    async def forget(sender, revoked, **kwargs) -> None:
        # Another worker may own these pairs next: reload from the table when they return.
        stats.clear()

    @app.agent(events, name="marketdata")
    async def follow(stream):
        await run_batches(stream, handle, after_batch=checkpoint)
