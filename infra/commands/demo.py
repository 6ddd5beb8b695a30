"""`keel demo`: demo traders (a market maker and a few takers) trading through the
gateway at KEEL_GATEWAY_HOST:KEEL_GATEWAY_PORT. `keel up --demo` runs it supervised.
Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad config."""
from __future__ import annotations

import argparse

from engine.markets import MarketsConfigError, load_markets
from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help="gateway base URL (default http://KEEL_GATEWAY_HOST:PORT)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import signal

    from gateway.demo import run_demo

    try:
        markets = load_markets(settings.markets_file)
    except MarketsConfigError as exc:
        print(f"keel demo: {exc}")
        return 2
    base = args.url or f"http://{settings.gateway_host}:{settings.gateway_port}"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        demo = asyncio.ensure_future(run_demo(settings, markets, base, stop))
        await stop.wait()
        demo.cancel()
        try:
            await demo
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0
