"""WebSocket streams on the real stack: a client rebuilding the book from the REST
snapshot plus @depth diffs ends equal to the engine's own book (replayed from keel.orders
with the pure engine), the user-data stream pushes order and balance updates, and the
gateway's local book follows synthetic keel.depth messages through a gap."""
from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import aiohttp
from confluent_kafka import Consumer, Producer

from engine.engine import Engine
from gateway.context import FOLDING, HUB, METRICS
from infra import topics
from infra.kafka import admin_client, consumer_config, producer_config
from schemas.codec import Codec
from tests.gateway.stack import serve_gateway
from tests.gateway.test_e2e import _traders, eventually, fund, run


def engine_book(stack, pair: str, partition: int):
    """The engine's book for `pair`: keel.orders replayed through the pure engine."""
    codec = Codec()
    consumer = Consumer(consumer_config(stack.settings, None, client_id="t-replay",
                                        enable_partition_eof=True))
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    consumer.assign([TopicPartition(stack.settings.topic("orders"), partition,
                                    OFFSET_BEGINNING)])
    engine = Engine(stack.markets)
    try:
        while True:
            msg = consumer.poll(5)
            assert msg is not None, "keel.orders never reached its end"
            if msg.error() is not None:
                break                           # partition EOF
            cmd, _ = codec.decode_command(msg.value())
            engine.apply(cmd)
    finally:
        consumer.close()
    return engine.book(pair)


def test_ws_book_rebuild_equals_engine_book(stack):
    market = stack.markets.market("BTCUSDT")

    def ints(levels):
        return {int(Decimal(p) / market.tick_size): int(Decimal(q) / market.lot_size)
                for p, q in levels}

    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            mm, bob = t["mm"], t["bob"]
            await fund(stack, t, "mm", "BTC", "10")
            await fund(stack, t, "mm", "USDT", "1000000")
            await fund(stack, t, "bob", "USDT", "100000")
            diffs: list[dict] = []
            async with http.ws_connect(f"{base}/ws/btcusdt@depth@100ms") as ws:
                async def collect():
                    async for msg in ws:
                        diffs.append(json.loads(msg.data))
                reader = asyncio.ensure_future(collect())
                for i in range(5):
                    for side, price in (("BUY", 29000 - 10 * i), ("SELL", 31000 + 10 * i)):
                        r = await mm.signed("POST", "/api/v3/order", symbol="BTCUSDT", side=side,
                                            type="LIMIT", timeInForce="GTC",
                                            price=f"{price}.00", quantity="0.5",
                                            newOrderRespType="RESULT")
                        assert r.status == 200, r.body
                snap = await bob.public("/api/v3/depth", symbol="BTCUSDT", limit=1000)
                last = snap.body["lastUpdateId"]
                book = {"bids": ints(snap.body["bids"]), "asks": ints(snap.body["asks"])}
                # more activity after the snapshot: a taker, cancels, new levels
                r = await bob.signed("POST", "/api/v3/order", symbol="BTCUSDT", side="BUY",
                                     type="MARKET", quantity="0.7")
                assert r.status == 200 and r.body["status"] == "FILLED", r.body
                opens = await mm.signed("GET", "/api/v3/openOrders", symbol="BTCUSDT")
                for o in opens.body[:3]:
                    c = await mm.signed("DELETE", "/api/v3/order", symbol="BTCUSDT",
                                        orderId=o["orderId"])
                    assert c.status == 200, c.body
                r = await mm.signed("POST", "/api/v3/order", symbol="BTCUSDT", side="BUY",
                                    type="LIMIT", timeInForce="GTC", price="29500.00",
                                    quantity="0.25", newOrderRespType="RESULT")
                assert r.status == 200
                final = await bob.public("/api/v3/depth", symbol="BTCUSDT", limit=999)
                target = final.body["lastUpdateId"]
                assert target > last

                async def caught_up():
                    return diffs and diffs[-1]["u"] >= target
                await eventually(stack, caught_up, "WebSocket diffs up to the final id")
                reader.cancel()
            # Binance's recipe: drop diffs with u <= lastUpdateId; the first applied one
            # straddles lastUpdateId + 1; each next one starts where the last ended.
            applied = [d for d in diffs if d["u"] > last]
            assert applied[0]["U"] <= last + 1 <= applied[0]["u"]
            prev = None
            for d in applied:
                assert prev is None or d["U"] == prev + 1, "diffs are contiguous"
                prev = d["u"]
                for key, side in (("b", "bids"), ("a", "asks")):
                    for price, lots in ints(d[key]).items():
                        if lots == 0:
                            book[side].pop(price, None)
                        else:
                            book[side][price] = lots
                if prev >= target:
                    break
            engine = engine_book(stack, "BTCUSDT", market.partition)
            assert engine.seq == target
            bids, asks = engine.depth(1000)
            assert sorted(book["bids"].items(), reverse=True) == [tuple(x) for x in bids]
            assert sorted(book["asks"].items()) == [tuple(x) for x in asks]
            assert bids and asks
    run(main())


def test_user_data_stream_pushes_orders_and_balances(stack):
    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            t = await _traders(http, base, stack)
            alice = t["alice"]
            async with http.post(f"{base}/api/v3/userDataStream",
                                 headers={"X-MBX-APIKEY": alice.api_key}) as resp:
                key = (await resp.json())["listenKey"]
            async with http.ws_connect(f"{base}/ws/{key}") as ws:
                await fund(stack, t, "alice", "USDT", "100")
                r = await alice.signed("POST", "/api/v3/order", symbol="ETHUSDT", side="BUY",
                                       type="LIMIT", timeInForce="GTC", price="10.00",
                                       quantity="1", newClientOrderId=f"u{uuid.uuid4().hex[:8]}")
                assert r.status == 200, r.body
                c = await alice.signed("DELETE", "/api/v3/order", symbol="ETHUSDT",
                                       orderId=r.body["orderId"])
                assert c.status == 200
                seen: list[tuple] = []
                while ("executionReport", "CANCELED") not in seen:
                    msg = json.loads((await ws.receive(timeout=60)).data)
                    if msg["e"] == "executionReport":
                        assert msg["i"] == r.body["orderId"] and msg["c"] == r.body["clientOrderId"]
                        seen.append((msg["e"], msg["X"]))
                    else:
                        assert msg["e"] == "outboundAccountPosition"
                        assert msg["B"][0]["a"] == "USDT"
                        seen.append((msg["e"], None))
                assert ("executionReport", "NEW") in seen
                assert ("outboundAccountPosition", None) in seen
    run(main())


def test_local_book_from_synthetic_depth_through_the_broker(stack):
    settings = stack.settings.with_(topic_prefix=f"d{uuid.uuid4().hex[:8]}.")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, stack.markets))
    assert all(o.ok for o in outcomes)
    codec = Codec()
    lv = lambda *pq: [{"price": p, "qty": q} for p, q in pq]  # noqa: E731

    def rec(first, last, snap, bids=(), asks=()):
        return {"pair": "ETHUSDT", "first_update_id": first, "last_update_id": last, "ts": 1,
                "is_snapshot": snap, "bids": lv(*bids), "asks": lv(*asks)}

    records = [
        rec(1, 9, False, [(100, 1)]),                      # before any snapshot: ignored
        rec(10, 10, True, [(100, 5), (99, 2)], [(101, 3)]),
        rec(11, 12, False, [(100, 0)], [(102, 4)]),
        rec(13, 13, False, [], [(101, 1)]),
        rec(15, 16, False, [(98, 7)]),                     # a hole (14 missing): unsynced
        rec(17, 17, False, [(97, 7)]),
        rec(17, 17, True, [(99, 2), (97, 7)], [(101, 1), (102, 4)]),
        rec(18, 18, False, [(96, 1)]),
    ]
    producer = Producer(producer_config(settings))
    partition = stack.markets.market("ETHUSDT").partition
    for r in records:
        producer.produce(settings.topic("depth"), codec.encode("depth_update", r),
                         key=b"ETHUSDT", partition=partition)
    assert producer.flush(10) == 0

    async def main():
        async with serve_gateway(settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v3/depth", params={"symbol": "ETHUSDT"}) as resp:
                body = await resp.json()
                assert resp.headers["Cache-Control"] == "public, max-age=0"
            assert body["lastUpdateId"] == 18
            assert body["bids"] == [["0.99", "0.0002"], ["0.97", "0.0007"], ["0.96", "0.0001"]]
            assert body["asks"] == [["1.01", "0.0001"], ["1.02", "0.0004"]]
            assert app[FOLDING].market.books["ETHUSDT"].gaps == 1
    run(main())
    assert Decimal("0.99") == stack.markets.market("ETHUSDT").ticks_to_price(99)


def test_demo_traffic_trades_within_seconds(stack):
    from gateway.demo import run_demo

    async def main():
        async with serve_gateway(stack.settings, stack.markets) as (app, base):
            stop = asyncio.Event()
            demo = asyncio.ensure_future(run_demo(stack.settings, stack.markets, base, stop))

            folding = app[FOLDING]

            async def traded_everywhere():
                if demo.done():
                    demo.result()                  # surface a crash
                await asyncio.sleep(0.2)
                books = folding.market.books.values()
                return (all(b.bids and b.asks for b in books)
                        and all(folding.market.trades[p] for p in folding.market.trades))
            try:
                await eventually(stack, traded_everywhere, lambda: (
                    "demo quotes on every pair and trades; books "
                    f"{[(p, len(b.bids), len(b.asks)) for p, b in folding.market.books.items()]}"
                    f" trades {[(p, len(t)) for p, t in folding.market.trades.items()]} "
                    "responses " + app[METRICS].render().decode().split(
                        "exchange_http_responses_total counter")[-1][:1500]))
            finally:
                stop.set()
                await asyncio.wait_for(demo, 30)
    run(main())


def test_tickers_and_candles_from_their_topics_rest_and_ws(stack):
    """keel.tickers / keel.candles (market data's output) fed synthetically through the
    broker: REST /ticker/*, /klines and the @ticker, @miniTicker, @kline_1m streams."""
    settings = stack.settings.with_(topic_prefix=f"m{uuid.uuid4().hex[:8]}.")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, stack.markets))
    assert all(o.ok for o in outcomes)
    codec = Codec()
    partition = stack.markets.market("BTCUSDT").partition
    producer = Producer(producer_config(settings))

    def ticker(ts, last):
        return {"pair": "BTCUSDT", "ts": ts, "window_ms": 86_400_000,
                "open_time": ts - 86_400_000, "last_price": last, "last_qty": 100,
                "best_bid_price": last - 1, "best_bid_qty": 5, "best_ask_price": last + 1,
                "best_ask_qty": 6, "open_price": 3_000_000, "high_price": last,
                "low_price": 2_900_000, "price_change": last - 3_000_000,
                "price_change_bp": (last - 3_000_000) * 10_000 // 3_000_000,
                "base_volume": 20_000, "quote_volume": 20_000 * 3_000_000, "trade_count": 7,
                "first_trade_id": 1, "last_trade_id": 7}

    def candle(open_time, close, closed):
        return {"pair": "BTCUSDT", "interval": "1m", "open_time": open_time,
                "close_time": open_time + 60_000, "open": 3_000_000, "high": close,
                "low": 2_999_000, "close": close, "base_volume": 300, "quote_volume": 9 * 10**8,
                "trade_count": 3, "closed": closed}

    def send(name, rec):
        topic = {"ticker": "tickers", "candle": "candles"}[name]
        producer.produce(settings.topic(topic), codec.encode(name, rec), key=b"BTCUSDT",
                         partition=partition)
        assert producer.flush(10) == 0

    send("ticker", ticker(1_000, 3_100_000))
    send("candle", candle(0, 3_050_000, True))
    send("candle", candle(60_000, 3_100_000, False))

    async def main():
        async with serve_gateway(settings, stack.markets) as (app, base), \
                aiohttp.ClientSession() as http:
            async def get(path, **params):
                async with http.get(base + path, params=params) as r:
                    return r.status, await r.json(), r.headers
            status, t24, headers = await get("/api/v3/ticker/24hr", symbol="BTCUSDT")
            assert status == 200 and headers["Cache-Control"] == "public, max-age=1"
            assert (t24["lastPrice"], t24["priceChange"], t24["priceChangePercent"]) == (
                "31000.00", "1000.00", "3.33")
            assert (t24["volume"], t24["count"], t24["firstId"]) == ("0.20000", 7, 1)
            status, price, _ = await get("/api/v3/ticker/price", symbol="BTCUSDT")
            assert price == {"symbol": "BTCUSDT", "price": "31000.00"}
            status, every, _ = await get("/api/v3/ticker/price")
            assert [p["symbol"] for p in every] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
            status, bad, _ = await get("/api/v3/ticker/price", symbol="NOPE")
            assert (status, bad["code"]) == (400, -1121)
            status, rows, _ = await get("/api/v3/klines", symbol="BTCUSDT", interval="1m")
            assert [(r[0], r[4], r[6]) for r in rows] == [(0, "30500.00", 59_999),
                                                         (60_000, "31000.00", 119_999)]
            status, bad, _ = await get("/api/v3/klines", symbol="BTCUSDT", interval="7m")
            assert (status, bad["code"]) == (400, -1120)
            url = f"{base}/stream?streams=btcusdt@ticker/btcusdt@miniTicker/btcusdt@kline_1m"
            async with http.ws_connect(url) as ws:
                hub = app[HUB]
                while not hub.has("btcusdt@kline_1m"):
                    await asyncio.sleep(0.01)
                send("ticker", ticker(2_000, 3_200_000))
                send("candle", candle(60_000, 3_200_000, True))
                got = {}
                while len(got) < 3:
                    msg = await ws.receive_json(timeout=30)
                    got[msg["stream"]] = msg["data"]
            assert got["btcusdt@ticker"]["c"] == "32000.00"
            assert got["btcusdt@miniTicker"]["e"] == "24hrMiniTicker"
            assert got["btcusdt@kline_1m"]["k"]["x"] is True
            assert got["btcusdt@kline_1m"]["k"]["c"] == "32000.00"
    run(main())


def test_feed_survives_records_it_cannot_apply(stack):
    """Garbage and a well-formed record for an unknown pair on the gateway's topics are
    skipped and counted; the feed keeps folding what follows."""
    settings = stack.settings.with_(topic_prefix=f"b{uuid.uuid4().hex[:8]}.")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, stack.markets))
    assert all(o.ok for o in outcomes)
    codec = Codec()
    partition = stack.markets.market("BTCUSDT").partition
    producer = Producer(producer_config(settings))
    producer.produce(settings.topic("events"), b"not avro", key=b"BTCUSDT", partition=partition)
    producer.produce(settings.topic("balances"),
                     codec.encode("balance", {"user_id": 5, "asset": "NOPE", "available": 1,
                                              "held": 0, "version": 1, "ts": 1}),
                     key=b"5", partition=0)
    snap = {"pair": "BTCUSDT", "first_update_id": 3, "last_update_id": 3, "ts": 1,
            "is_snapshot": True, "bids": [{"price": 100, "qty": 1}], "asks": []}
    producer.produce(settings.topic("depth"), b"\xc3\x01garbage", key=b"BTCUSDT",
                     partition=partition)
    producer.produce(settings.topic("depth"), codec.encode("depth_update", snap),
                     key=b"BTCUSDT", partition=partition)
    assert producer.flush(10) == 0

    async def main():
        async with serve_gateway(settings, stack.markets) as (app, base):
            from gateway.context import FEED
            assert app[FEED].decode_errors >= 2
            assert app[FOLDING].market.books["BTCUSDT"].last_update_id == 3
    run(main())


def test_feed_reads_a_backlog_of_small_batches_then_the_live_tail(stack):
    """A gateway started on topics holding many single-record batches (what a writer at
    a low rate leaves) folds them all and becomes ready — it reads them with the long
    catch-up fetch wait — then hands over to the live consumer, which sees new records."""
    settings = stack.settings.with_(topic_prefix=f"c{uuid.uuid4().hex[:8]}.")
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, stack.markets))
    assert all(o.ok for o in outcomes)
    codec = Codec()
    producer = Producer(producer_config(settings, linger_ms=0))

    def balance(user_id: int, version: int) -> None:
        producer.produce(settings.topic("balances"), codec.encode("balance", {
            "user_id": user_id, "asset": "USDT", "available": version, "held": 0,
            "version": version, "ts": version}), key=str(user_id).encode(), partition=0)
        assert producer.flush(10) == 0            # one record per batch

    backlog = 300
    for version in range(1, backlog + 1):
        balance(user_id=version % 7 + 1, version=version)

    async def main():
        async with serve_gateway(settings, stack.markets) as (app, base):
            from gateway.context import FEED
            feed, orders = app[FEED], app[FOLDING].orders
            assert feed.ready.is_set()
            # the last version written for each user is what the feed folded
            for user_id in range(1, 8):
                last = max(v for v in range(1, backlog + 1) if v % 7 + 1 == user_id)
                assert orders.balances[user_id]["USDT"][0] == last
            await eventually(stack, lambda: _true(feed.live), "the feed went live")
            balance(user_id=99, version=backlog + 1)
            await eventually(stack, lambda: _true(99 in orders.balances),
                             "a record written after the hand-over is folded")
    run(main())


async def _true(value: bool) -> bool:
    return value
