"""`keel streams marketdata` on the broker: tickers and candles equal a direct computation
from the trades the engine wrote, including across a restart of the worker (its pair
state comes back from the checkpoint table, and what it committed is in that table)."""
from __future__ import annotations

import random
import signal

from engine.domain import Accepted, Place, Rejected, Trade
from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS
from schemas.codec import Codec
from tests.streams.test_market import direct_candles, direct_ticker

MARKETS = load_markets(DEFAULT_MARKETS)


def send_orders(client, rnd: random.Random, n: int, start_id: int, ts: int) -> int:
    codec = client.codec
    for i in range(n):
        pair = rnd.choice(sorted(MARKETS.markets))
        mid = {"BTCUSDT": 6_500_000, "ETHUSDT": 350_000, "SOLUSDT": 15_000}[pair]
        ts += rnd.randint(0, 20_000)                 # ~10 s apart: several candles
        cmd = Place(pair, start_id + i, 1 + i % 5, rnd.randint(0, 1), 0, 0,
                    mid + rnd.randint(-5, 5), rnd.randint(100, 300), 0, 0, ts)
        client.producer.produce(client.settings.topic("orders"), key=pair.encode(),
                                value=codec.encode_command(cmd, f"r{start_id + i}"),
                                partition=MARKETS.markets[pair].partition)
    client.flush()
    return ts


def checkpoints_behind_commits(settings) -> dict:
    """Read after the worker stopped: the pairs whose last checkpoint (in the table's
    changelog) has a lower seq than an event below the group's committed offset on
    keel.events, as {pair: (checkpoint seq, highest committed seq)}. run_batches folds a
    batch into the checkpoints before it commits, so this must stay empty: a worker
    restarted from such a checkpoint and commit skips the events between them for good."""
    import json

    from confluent_kafka import Consumer, TopicPartition

    from infra.kafka import consumer_config
    from streams.compat import read_records

    codec, events = Codec(), settings.topic("events")
    changelog = f"{settings.topic_prefix}streams-marketdata-pairs-changelog"
    group = Consumer(consumer_config(settings, f"{settings.topic_prefix}streams-marketdata"))
    # read_uncommitted: the changelog is written without transactions (README quirks)
    reader = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "keel-test-cover",
                       "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    committed_seq: dict[str, int] = {}
    checkpoint_seq: dict[str, int] = {}
    try:
        for p in range(MARKETS.partitions):
            end = group.committed([TopicPartition(events, p)], timeout=10)[0].offset
            for msg in read_records(reader, events, p, 0):
                if msg.offset() < end:
                    ev = codec.decode_event(msg.value())
                    committed_seq[ev.pair] = max(committed_seq.get(ev.pair, 0), ev.seq)
            for msg in read_records(reader, changelog, p, 0):
                checkpoint_seq[json.loads(msg.key())] = json.loads(msg.value())[0]
    finally:
        reader.close()
        group.close()
    return {pair: (checkpoint_seq.get(pair, 0), seq) for pair, seq in committed_seq.items()
            if checkpoint_seq.get(pair, 0) < seq}


def test_tickers_and_candles_match_the_trades_across_restarts(workers, client):
    """Three SIGTERMs while the worker is busy, each followed by a check that the state it
    left covers what it committed, then the values against the trades (issue 5)."""
    workers.start_engine()
    md = workers.start("marketdata")
    rnd = random.Random(3)
    ts = send_orders(client, rnd, 300, 1, 1_700_000_000_000)
    codec = client.codec
    decode_ticker = lambda v: codec.decode("ticker", v)  # noqa: E731
    seen, placed = 20, 300
    for restart in range(3):
        client.read("tickers", decode_ticker, lambda got: len(got) >= seen)  # noqa: B023
        # SIGTERM: the worker ends after the batch in hand has committed (streams.app)
        workers.stop(md, signal.SIGTERM)
        assert checkpoints_behind_commits(client.settings) == {}, restart
        md = workers.start("marketdata")
        ts = send_orders(client, rnd, 150, 1_000 * (restart + 1), ts)
        placed += 150
        # what the stopped worker sent is drained first: the next 20 come from this one
        seen = len(client.read("tickers", decode_ticker, lambda got: True, quiet=2.0)) + 20
    # every Place ends in one Accepted or Rejected; then drain what followed it
    events = client.read("events", codec.decode_event,
                         lambda got: sum(isinstance(e, Accepted | Rejected) for e in got)
                         >= placed, quiet=3.0)
    trades = {}
    for e in events:
        if isinstance(e, Trade):
            trades.setdefault(e.pair, []).append(e)
    last_trade = {p: t[-1] for p, t in trades.items()}
    tickers = client.read(
        "tickers", decode_ticker,
        lambda got: all(any(t["pair"] == p and t["last_trade_id"] == lt.trade_id for t in got)
                        for p, lt in last_trade.items()))
    last_minute = {p: t.ts - t.ts % 60_000 for p, t in last_trade.items()}
    candles = client.read(
        "candles", lambda v: codec.decode("candle", v),
        lambda got: all(any(c["pair"] == p and c["open_time"] == m for c in got)
                        for p, m in last_minute.items()), quiet=3.0)
    for pair, ts_trades in trades.items():
        last = [t for t in tickers if t["pair"] == pair and
                t["last_trade_id"] == last_trade[pair].trade_id][-1]
        want = direct_ticker(ts_trades, ts_trades[-1].ts)
        assert {k: last[k] for k in want} == want, pair
        final = {}
        for c in candles:
            if c["pair"] == pair:
                final[c["open_time"]] = c
        direct = direct_candles(ts_trades)
        assert set(final) == set(direct), pair
        for start, c in final.items():
            assert {k: c[k] for k in direct[start]} == direct[start], (pair, start)


def test_tickers_and_candles_match_the_trades(workers, client):
    workers.start_engine()
    workers.start("marketdata")
    send_orders(client, random.Random(4), 400, 1, 1_700_000_000_000)
    codec = client.codec
    events = client.read("events", codec.decode_event,
                         lambda got: sum(isinstance(e, Accepted | Rejected) for e in got) >= 400,
                         quiet=3.0)
    trades: dict[str, list] = {}
    for e in events:
        if isinstance(e, Trade):
            trades.setdefault(e.pair, []).append(e)
    assert len(trades) == 3 and sum(len(t) for t in trades.values()) > 100
    last_trade = {p: t[-1] for p, t in trades.items()}
    tickers = client.read(
        "tickers", lambda v: codec.decode("ticker", v),
        lambda got: all(any(t["pair"] == p and t["last_trade_id"] == lt.trade_id for t in got)
                        for p, lt in last_trade.items()))
    last_minute = {p: t.ts - t.ts % 60_000 for p, t in last_trade.items()}
    candles = client.read(
        "candles", lambda v: codec.decode("candle", v),
        lambda got: all(any(c["pair"] == p and c["open_time"] == m for c in got)
                        for p, m in last_minute.items()), quiet=3.0)
    for pair, pair_trades in trades.items():
        last = [t for t in tickers if t["pair"] == pair and
                t["last_trade_id"] == last_trade[pair].trade_id][-1]
        want = direct_ticker(pair_trades, pair_trades[-1].ts)
        assert {k: last[k] for k in want} == want, pair
        final = {c["open_time"]: c for c in candles if c["pair"] == pair}
        direct = direct_candles(pair_trades)
        assert set(final) == set(direct), pair
        for start, c in final.items():
            assert {k: c[k] for k in direct[start]} == direct[start], (pair, start)
