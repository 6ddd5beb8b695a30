"""Public market-data endpoints (no key): ping, time, exchangeInfo, depth, trades,
aggTrades, klines and the tickers, all answered from the gateway's folded state and
cached for their TTL."""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway import errors
from gateway import render as r
from gateway.cache import TTL_S, cache_control
from gateway.context import CACHE, CLOCK_MS, CONFIG, FOLDING, MARKETS
from gateway.market import INTERVALS
from gateway.params import Params

Handler = Callable[[web.Request], Awaitable[web.Response]]


def dump_json(data) -> bytes:
    """Compact JSON (orjson: a tenth of json.dumps' time on an order's answer; non-ASCII
    is written as UTF-8, not escaped — the same JSON)."""
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


def json_response(data, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dump_json(data), content_type="application/json",
                        headers=headers)


def cached(compute: Callable[[web.Request, Params], object]) -> Handler:
    """Wrap a pure renderer: parameters validated first, then served from the cache.

    What is cached is the whole answer — body bytes and headers — built once per TTL;
    a hit costs a dict lookup and a Response around them."""
    async def handler(request: web.Request) -> web.Response:
        path = request.path
        cache = request.app[CACHE]
        now = time.monotonic()
        # Fast path on the exact query text: only answers to valid queries are cached.
        raw_key = path + "?" + request.rel_url.raw_query_string
        answer = cache.get(raw_key, now)
        if answer is None:
            ttl = TTL_S[path]
            params = Params(request.rel_url.raw_query_string)
            key = path + "?" + urlencode(sorted(params.values.items()))
            answer = cache.get(key, now)
            if answer is None:
                body = dump_json(compute(request, params))
                answer = (body, {"Content-Type": "application/json",
                                 "Cache-Control": cache_control(ttl)})
                cache.put(key, answer, now, ttl)
            cache.put(raw_key, answer, now, ttl)
        return web.Response(body=answer[0], headers=answer[1])
    return handler


async def ping(request: web.Request) -> web.Response:
    return json_response({})


async def server_time(request: web.Request) -> web.Response:
    return json_response({"serverTime": request.app[CLOCK_MS]()})


def exchange_info(request: web.Request, params: Params):
    app = request.app
    markets = app[MARKETS]
    info = r.exchange_info(markets, app[FOLDING].units, app[CLOCK_MS](),
                           app[CONFIG].limits.per_ip)
    wanted = _symbols(request, params)
    if wanted is not None:
        info["symbols"] = [s for s in info["symbols"] if s["symbol"] in wanted]
    return info


def _symbols(request: web.Request, params: Params) -> list[str] | None:
    """`symbol=X` or `symbols=["X","Y"]`, each checked against the markets config."""
    markets = request.app[MARKETS]
    one, many = params.text("symbol"), params.text("symbols")
    if one is not None and many is not None:
        raise errors.ApiError(-1101, "Parameter 'symbol' and 'symbols' cannot be sent together.")
    if one is not None:
        names = [one]
    elif many is not None:
        try:
            names = json.loads(many)
        except ValueError:
            raise errors.illegal_chars("symbols") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise errors.illegal_chars("symbols")
    else:
        return None
    for name in names:
        if markets.market(name.upper()) is None:
            raise errors.invalid_symbol()
    return [n.upper() for n in names]


def depth(request: web.Request, params: Params):
    market = params.market(request.app[MARKETS])
    limit = params.integer("limit", default=100, low=1, high=5000)
    folding = request.app[FOLDING]
    book = folding.market.books[market.pair]
    u = folding.units[market.pair]
    bids, asks = book.depth(limit)
    return {"lastUpdateId": book.last_update_id, "bids": r.levels(u, bids),
            "asks": r.levels(u, asks)}


def trades(request: web.Request, params: Params):
    market = params.market(request.app[MARKETS])
    limit = params.integer("limit", default=500, low=1, high=1000)
    folding = request.app[FOLDING]
    u = folding.units[market.pair]
    recent = list(folding.market.trades[market.pair])[-limit:]
    return [r.public_trade(u, t) for t in recent]


def agg_trades(request: web.Request, params: Params):
    market = params.market(request.app[MARKETS])
    limit = params.integer("limit", default=500, low=1, high=1000)
    from_id = params.integer("fromId", low=0)
    start = params.integer("startTime", low=0)
    end = params.integer("endTime", low=0)
    folding = request.app[FOLDING]
    u = folding.units[market.pair]
    rows = [t for t in folding.market.trades[market.pair]
            if (from_id is None or t.trade_id >= from_id)
            and (start is None or t.ts >= start) and (end is None or t.ts <= end)]
    rows = rows[:limit] if (from_id is not None or start is not None) else rows[-limit:]
    return [r.agg_trade(u, t) for t in rows]


def klines(request: web.Request, params: Params):
    market = params.market(request.app[MARKETS])
    interval = params.choice("interval", INTERVALS, required=True,
                             error=errors.invalid_interval)
    limit = params.integer("limit", default=500, low=1, high=1000)
    start = params.integer("startTime", low=0)
    end = params.integer("endTime", low=0)
    folding = request.app[FOLDING]
    u = folding.units[market.pair]
    return [r.kline_row(u, c)
            for c in folding.market.klines(market.pair, interval, start, end, limit)]


def _per_symbol(request: web.Request, params: Params, one) -> object:
    wanted = _symbols(request, params)
    folding = request.app[FOLDING]
    pairs = wanted if wanted is not None else sorted(folding.units)
    rows = [one(folding, pair) for pair in pairs]
    return rows[0] if params.text("symbol") is not None else rows


def ticker_24h(request: web.Request, params: Params):
    now = request.app[CLOCK_MS]()
    return _per_symbol(request, params, lambda f, p: r.ticker_24h(
        f.units[p], f.market.tickers.get(p), f.market.books[p].best(), now))


def ticker_price(request: web.Request, params: Params):
    def one(f, p):
        t = f.market.tickers.get(p)
        last = t.get("last_price") if t else None
        if last is None and f.market.trades[p]:
            last = f.market.trades[p][-1].price
        return {"symbol": p, "price": f.units[p].price(last)}
    return _per_symbol(request, params, one)


def book_ticker(request: web.Request, params: Params):
    return _per_symbol(request, params,
                       lambda f, p: r.book_ticker(f.units[p], f.market.books[p].best()))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v3/ping", ping)
    app.router.add_get("/api/v3/time", server_time)
    app.router.add_get("/api/v3/exchangeInfo", cached(exchange_info))
    app.router.add_get("/api/v3/depth", cached(depth))
    app.router.add_get("/api/v3/trades", cached(trades))
    app.router.add_get("/api/v3/aggTrades", cached(agg_trades))
    app.router.add_get("/api/v3/klines", cached(klines))
    app.router.add_get("/api/v3/ticker/24hr", cached(ticker_24h))
    app.router.add_get("/api/v3/ticker/price", cached(ticker_price))
    app.router.add_get("/api/v3/ticker/bookTicker", cached(book_ticker))
