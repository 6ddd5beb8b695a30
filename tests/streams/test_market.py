"""Tickers and candles from engine events equal a direct computation from the trades."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain import Cancel, Place, Trade
from engine.engine import Engine
from streams.market import DAY_MS, MINUTE_MS, PairStats
from tests.streams.sim import MARKETS

PAIR = "AAAQQQ"


def direct_ticker(trades: list[Trade], now: int) -> dict:
    w = [t for t in trades if t.ts > now - DAY_MS]
    if not w:
        return {"trade_count": 0, "base_volume": 0, "quote_volume": 0, "last_price": None}
    change = w[-1].price - w[0].price
    bp = abs(change) * 10_000 // w[0].price
    return {"trade_count": len(w), "base_volume": sum(t.qty for t in w),
            "quote_volume": sum(t.price * t.qty for t in w), "last_price": w[-1].price,
            "last_qty": w[-1].qty, "open_price": w[0].price,
            "high_price": max(t.price for t in w), "low_price": min(t.price for t in w),
            "price_change": change, "price_change_bp": -bp if change < 0 else bp,
            "first_trade_id": w[0].trade_id, "last_trade_id": w[-1].trade_id}


def direct_candles(trades: list[Trade]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for t in trades:
        start = t.ts - t.ts % MINUTE_MS
        c = out.setdefault(start, {"open": t.price, "high": t.price, "low": t.price,
                                   "base_volume": 0, "quote_volume": 0, "trade_count": 0})
        c["high"], c["low"], c["close"] = max(c["high"], t.price), min(c["low"], t.price), t.price
        c["base_volume"] += t.qty
        c["quote_volume"] += t.price * t.qty
        c["trade_count"] += 1
    return out


orders = st.lists(st.tuples(st.integers(0, 1), st.integers(95, 105), st.integers(1, 9),
                            st.integers(0, 3 * MINUTE_MS)), min_size=1, max_size=150)


@settings(max_examples=150, deadline=None)
@given(script=orders, gap=st.sampled_from([0, 6 * 3_600_000, 13 * 3_600_000]))
def test_ticker_and_candles_equal_a_direct_computation(script, gap):
    engine, stats = Engine(MARKETS, impl="python"), PairStats(PAIR)
    ts, trades, tickers, candles = 1_700_000_000_000, [], [], []
    for n, (side, price, qty, step) in enumerate(script):
        ts += step + (gap if n % 20 == 19 else 0)      # sometimes hours pass: windows roll
        cmd = Place(PAIR, n + 1, 1 + n % 3, side, 0, 0, price, qty, 0, 0, ts)
        if n % 7 == 6:                                   # cancels move the best prices too
            cmd = Cancel(PAIR, n - 2, 1 + (n - 3) % 3, ts)   # the order placed at n - 3
        for ev in engine.apply(cmd):
            if isinstance(ev, Trade):
                trades.append(ev)
            ticker, new = stats.apply(ev)
            stats.apply(ev)                             # a redelivered event changes nothing
            if ticker is not None:
                tickers.append(ticker)
                # every ticker, not only the last: high/low/open follow the rolling window
                want = direct_ticker(trades, ticker["ts"])
                assert {k: ticker[k] for k in want} == want
            candles += new
        if n % 5 == 4:          # a restart from the checkpoint (as the table stores it)
            stats = PairStats.load(PAIR, orjson.loads(orjson.dumps(stats.dump())))
        book = engine.book(PAIR)
        assert stats.best(0)[0] == book.best_bid()
        assert stats.best(1)[0] == book.best_ask()
    if not trades:
        return
    last = tickers[-1]
    want = direct_ticker(trades, trades[-1].ts)
    assert {k: last[k] for k in want} == want
    assert last["window_ms"] == DAY_MS and last["open_time"] == last["ts"] - DAY_MS
    # the last message per candle is what a consumer keeps
    final = {}
    for c in candles:
        final[c["open_time"]] = c
    direct = direct_candles(trades)
    assert set(final) == set(direct)
    for start, c in final.items():
        assert {k: c[k] for k in direct[start]} == direct[start]
        assert c["close_time"] == start + MINUTE_MS
    assert all(final[s]["closed"] for s in sorted(final)[:-1])
    assert not final[max(final)]["closed"]


def test_dump_and_load_round_trip():
    s = PairStats(PAIR)
    engine = Engine(MARKETS, impl="python")
    for n, (side, price) in enumerate([(1, 100), (1, 101), (0, 102), (0, 99)]):
        for ev in engine.apply(Place(PAIR, n + 1, 1, side, 0, 0, price, 3, 0, 0, 1_000 + n)):
            s.apply(ev)
    t = PairStats.load(PAIR, s.dump())
    assert t.dump() == s.dump() and t.ticker() == s.ticker()


def test_high_and_low_follow_a_rolling_window_over_a_long_run():
    # The 24 h high and low are kept incrementally (streams.market): every ticker of a
    # long run whose window keeps rolling equals a direct computation over the window.
    import random

    rnd = random.Random(7)
    stats, trades, ts = PairStats(PAIR), [], 1_700_000_000_000
    for n in range(3_000):
        ts += rnd.choice([0, 60_000, 900_000, 3_600_000])       # ~40-100 trades in 24 h
        price = rnd.randint(1, 1_000) if n % 500 < 250 else 500 + n % 7   # spikes, then calm
        trade = Trade(PAIR, n + 1, ts, n + 1, price, 1 + n % 5, n % 2, 10**6 + n, 1, n, 2, 0, 0)
        trades.append(trade)
        ticker, _ = stats.apply(trade)
        want = direct_ticker(trades[-200:], ts)
        assert {k: ticker[k] for k in want} == want, n
        if n % 400 == 399:
            stats = PairStats.load(PAIR, orjson.loads(orjson.dumps(stats.dump())))
