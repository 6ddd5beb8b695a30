"""`keel gateway`: the Binance-compatible REST and WebSocket gateway for traders.

    keel gateway                      # KEEL_GATEWAY_HOST:KEEL_GATEWAY_PORT (127.0.0.1:8080)
    keel gateway --port 8081          # a second instance (gateways are stateless)

Serves /api/v3/..., /ws, /stream, /docs (OpenAPI) and /metrics on the same port.
Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad config.
"""
from __future__ import annotations

import argparse

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings


def gateway_processes(settings: Settings, demo: bool = False) -> list:
    """Supervisor specs: the gateway (healthy once its feed has caught up) and, with
    --demo, the demo traders that trade through it."""
    from infra.health import HealthCheck
    from infra.processes import ProcessSpec, keel_argv

    health = HealthCheck("http", f"http://{settings.gateway_host}:{settings.gateway_port}/health")
    specs = [ProcessSpec("gateway", keel_argv("gateway"), health=health,
                         depends_on=("kafka", "postgres"))]
    if demo:
        specs.append(ProcessSpec("demo", keel_argv("demo"), depends_on=("gateway",)))
    return specs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default KEEL_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default KEEL_GATEWAY_PORT)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from gateway.app import build_app
    from gateway.config import GatewayConfig

    try:
        markets = load_markets(settings.markets_file)
        config = GatewayConfig.from_settings(settings)
    except (MarketsConfigError, ValueError) as exc:
        print(f"keel gateway: {exc}")
        return 2
    host = args.host or config.host
    port = args.port if args.port is not None else config.port
    app = build_app(settings, markets, config)
    try:
        # libuv's loop roughly doubles aiohttp's requests per core; asyncio's loop is the
        # fallback where uvloop is not installed.
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    # run_app handles SIGTERM/SIGINT: stops accepting, closes sockets, runs cleanup_ctx.
    if loop_factory is not None:
        import asyncio

        loop = loop_factory()
        asyncio.set_event_loop(loop)
        web.run_app(app, host=host, port=port, print=None, access_log=None,
                    handle_signals=True, shutdown_timeout=5.0, loop=loop)
    else:
        web.run_app(app, host=host, port=port, print=None, access_log=None,
                    handle_signals=True, shutdown_timeout=5.0)
    return 0
