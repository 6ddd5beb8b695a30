"""`keel streams marketdata` on the broker: tickers and candles equal a direct computation
from the trades the engine wrote, including across a restart of the worker (its pair
state comes back from the checkpoint table)."""
from __future__ import annotations

import random
import signal

import pytest

from engine.domain import Accepted, Place, Rejected, Trade
from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS
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


@pytest.mark.xfail(strict=False, reason=(
    "known, open (issue 5), intermittent: passed 4 times in a row after the read-isolation "
    "fix and in one clean-clone CI run, failed in the next; cause not found"))
def test_tickers_and_candles_match_the_trades_across_a_restart(workers, client):
    workers.start_engine()
    md = workers.start("marketdata")
    rnd = random.Random(3)
    ts = send_orders(client, rnd, 300, 1, 1_700_000_000_000)
    codec = client.codec
    client.read("tickers", lambda v: codec.decode("ticker", v), lambda got: len(got) >= 20)
    # state must come back from the table (SIGTERM: see test_conservation_broker on
    # what tansu does with a SIGKILLed worker's open transaction)
    workers.stop(md, signal.SIGTERM)
    workers.start("marketdata")
    send_orders(client, rnd, 300, 1_000, ts)
    # every Place ends in one Accepted or Rejected; then drain what followed it
    events = client.read("events", codec.decode_event,
                         lambda got: sum(isinstance(e, Accepted | Rejected) for e in got) >= 600,
                         quiet=3.0)
    trades = {}
    for e in events:
        if isinstance(e, Trade):
            trades.setdefault(e.pair, []).append(e)
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
