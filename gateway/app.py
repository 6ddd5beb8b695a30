"""The gateway application: wiring only. Resources open and close through cleanup_ctx
(PostgreSQL pool for API keys, the Kafka feed, the request producer) and are shared with
handlers through typed AppKeys (gateway.context)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from engine.markets import MarketsConfig
from gateway import admin, docs, public, trade, ws
from gateway.cache import ResponseCache
from gateway.config import GatewayConfig
from gateway.context import (
    BUS,
    CACHE,
    CLOCK_MS,
    CONFIG,
    FEED,
    FOLDING,
    HUB,
    KEYS,
    LIMITER,
    LISTEN_KEYS,
    MARKETS,
    METRICS,
)
from gateway.fanout import Hub
from gateway.feed import Feed
from gateway.listen_keys import ListenKeys
from gateway.metrics import GatewayMetrics
from gateway.middleware import edge
from gateway.ratelimit import RateLimiter
from gateway.requests import RequestBus
from gateway.state import Folding
from gateway.users import KeyStore
from gateway.vault import Vault
from infra.settings import Settings
from schemas.codec import Codec


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def build_app(settings: Settings, markets: MarketsConfig, config: GatewayConfig | None = None,
              clock_ms: Callable[[], int] = wall_clock_ms) -> web.Application:
    config = config or GatewayConfig.from_settings(settings)
    app = web.Application(middlewares=[edge], client_max_size=64 * 1024)
    metrics = GatewayMetrics()
    hub = Hub(on_drop=lambda _sub: metrics.ws_dropped.inc(),
              on_sent=lambda pair, n: metrics.ws_sent.labels(pair).inc(n))
    codec = Codec.from_settings(settings)
    app[CONFIG] = config
    app[MARKETS] = markets
    app[METRICS] = metrics
    app[HUB] = hub
    app[FOLDING] = Folding(markets, hub)
    app[LIMITER] = RateLimiter(config.limits)
    app[CACHE] = ResponseCache()
    app[CLOCK_MS] = clock_ms

    async def keys_ctx(app: web.Application):
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=4, open=False,
                                   kwargs={"autocommit": True})
        await pool.open()
        vault = Vault.from_settings(settings)
        app[KEYS] = KeyStore(pool, vault)
        app[LISTEN_KEYS] = ListenKeys(vault.derive(b"listen-keys"))
        yield
        await pool.close()

    async def kafka_ctx(app: web.Application):
        app[FEED] = Feed(settings, codec, app[FOLDING])
        app[FEED].start()
        app[BUS] = RequestBus(settings, codec, app[FOLDING], config.order_timeout_s)
        pacer = asyncio.get_running_loop().create_task(app[FOLDING].run_depth_pacer())
        yield
        pacer.cancel()
        app[BUS].close()
        app[FEED].stop()

    app.cleanup_ctx.append(keys_ctx)
    app.cleanup_ctx.append(kafka_ctx)

    async def health(request: web.Request) -> web.Response:
        ready = request.app[FEED].ready.is_set()
        return public.json_response({"ready": ready}, None) if ready else web.json_response(
            {"ready": False}, status=503)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=request.app[METRICS].render(),
                            content_type="text/plain", charset="utf-8")

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    public.add_routes(app)
    trade.add_routes(app)
    admin.add_routes(app)
    ws.add_routes(app)
    docs.add_routes(app, markets)
    return app
