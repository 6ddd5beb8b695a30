"""Typed application keys: how handlers reach the gateway's shared resources."""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from engine.markets import MarketsConfig
from gateway.cache import ResponseCache
from gateway.config import GatewayConfig
from gateway.fanout import Hub
from gateway.feed import Feed
from gateway.listen_keys import ListenKeys
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.requests import RequestBus
from gateway.state import Folding
from gateway.users import KeyStore

CONFIG = web.AppKey("config", GatewayConfig)
MARKETS = web.AppKey("markets", MarketsConfig)
FOLDING = web.AppKey("folding", Folding)
HUB = web.AppKey("hub", Hub)
FEED = web.AppKey("feed", Feed)
BUS = web.AppKey("bus", RequestBus)
KEYS = web.AppKey("keys", KeyStore)
LIMITER = web.AppKey("limiter", RateLimiter)
CACHE = web.AppKey("cache", ResponseCache)
METRICS = web.AppKey("metrics", GatewayMetrics)
CLOCK_MS = web.AppKey("clock_ms", Callable[[], int])
LISTEN_KEYS = web.AppKey("listen_keys", ListenKeys)
PRINCIPAL = web.RequestKey("principal", object)      # Principal | None, set by the edge
