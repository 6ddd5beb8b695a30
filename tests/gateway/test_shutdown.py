"""`keel gateway` as the operator runs it: SIGTERM with WebSocket clients connected tells
each of them the server is going away (close 1001) and the process exits 0 — the open
sockets no longer hold the stop up for aiohttp's whole shutdown timeout."""
from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
from aiohttp import WSMsgType

from infra.embedded import free_port
from tests.gateway.conftest import fresh_database, make_settings, spawn


def test_sigterm_closes_websockets_and_exits_cleanly(kafka_bootstrap, postgres_dsn, tmp_path):
    port = free_port()
    settings = make_settings(kafka_bootstrap, fresh_database(postgres_dsn), tmp_path / "keel",
                             KEEL_GATEWAY_PORT=str(port))
    proc = spawn(settings, tmp_path, "gateway", "gateway")
    base = f"http://127.0.0.1:{port}"

    async def main() -> list:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120           # a hang guard, not a speed check
            while True:
                assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
                try:
                    async with http.get(f"{base}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the gateway never became healthy"
                await asyncio.sleep(0.2)
            socks = [await http.ws_connect(f"{base}/ws/btcusdt@trade", compress=c)
                     for c in (15, 0, 15)]
            async with http.get(f"{base}/api/v3/ping") as resp:   # and a keep-alive one
                assert resp.status == 200
            proc.send_signal(signal.SIGTERM)
            closes = []
            for sock in socks:
                # The code the server's close frame carried: sock.close_code is aiohttp's
                # own, 1006 when its close reply finds the connection already gone (the
                # process may have exited while the sockets before this one were read).
                msg = await sock.receive(timeout=60)
                closes.append((msg.type, msg.data))
            return closes

    try:
        closes = asyncio.run(main())
        assert closes == [(WSMsgType.CLOSE, 1001)] * 3, closes
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
