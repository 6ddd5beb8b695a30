"""WebSocket fan-out on a real aiohttp server: control frames, the /stream wrapper, and a
stalled client (a raw socket that never reads) dropped while another keeps receiving."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import zlib

import aiohttp
from aiohttp import web

from engine.markets import load_markets
from gateway import ws
from gateway.config import GatewayConfig
from gateway.context import CONFIG, HUB, LISTEN_KEYS, MARKETS, METRICS
from gateway.fanout import Hub
from gateway.listen_keys import ListenKeys
from gateway.metrics import GatewayMetrics
from infra.settings import DEFAULT_MARKETS


async def _serve(outbox: int):
    app = web.Application()
    metrics = GatewayMetrics()
    app[CONFIG] = GatewayConfig(ws_outbox=outbox)
    app[MARKETS] = load_markets(DEFAULT_MARKETS)
    app[METRICS] = metrics
    app[HUB] = Hub(on_drop=lambda _sub: metrics.ws_dropped.inc(),
                   on_sent=lambda pair, n: metrics.ws_sent.labels(pair).inc(n))
    app[LISTEN_KEYS] = ListenKeys(b"k" * 32)
    ws.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return app, runner, port


def _sample(metrics: GatewayMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_subscribe_list_unsubscribe_and_combined_wrapper():
    async def main():
        app, runner, port = await _serve(outbox=64)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as sock:
                    await sock.send_json({"method": "SUBSCRIBE", "id": 1,
                                          "params": ["btcusdt@trade", "ethusdt@depth@100ms"]})
                    assert await sock.receive_json() == {"result": None, "id": 1}
                    await sock.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
                    assert await sock.receive_json() == {
                        "result": ["btcusdt@trade", "ethusdt@depth@100ms"], "id": 2}
                    await sock.send_json({"method": "SUBSCRIBE", "id": 3,
                                          "params": ["dogeusdt@trade"]})
                    assert (await sock.receive_json())["error"]["code"] == 2
                    await sock.send_json({"method": "UNSUBSCRIBE", "id": 4,
                                          "params": ["btcusdt@trade"]})
                    assert await sock.receive_json() == {"result": None, "id": 4}
                    app[HUB].publish("ethusdt@depth@100ms", {"e": "depthUpdate", "u": 9}, "ETHUSDT")
                    app[HUB].publish("btcusdt@trade", {"e": "trade"}, "BTCUSDT")
                    assert await sock.receive_json() == {"e": "depthUpdate", "u": 9}
                url = f"http://127.0.0.1:{port}/stream?streams=btcusdt@trade/btcusdt@kline_1m"
                async with http.ws_connect(url) as sock:
                    while not app[HUB].has("btcusdt@kline_1m"):
                        await asyncio.sleep(0.01)
                    app[HUB].publish("btcusdt@kline_1m", {"e": "kline"}, "BTCUSDT")
                    assert await sock.receive_json() == {"stream": "btcusdt@kline_1m",
                                                         "data": {"e": "kline"}}
                resp = await http.get(f"http://127.0.0.1:{port}/stream?streams=nope@x")
                assert resp.status == 400 or resp.status == 500
            assert _sample(app[METRICS], "exchange_ws_messages_sent_total", pair="BTCUSDT") >= 1
        finally:
            await runner.cleanup()
    asyncio.run(main())


def _stalled_client(port: int, stream: str) -> socket.socket:
    """A WebSocket client that completes the handshake, subscribes, then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws/{stream} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return s


def test_stalled_client_is_dropped_while_others_keep_receiving():
    async def main():
        app, runner, port = await _serve(outbox=32)
        hub, metrics = app[HUB], app[METRICS]
        stalled = await asyncio.to_thread(_stalled_client, port, "btcusdt@trade")
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"http://127.0.0.1:{port}/ws/btcusdt@trade") as good:
                    while len(hub.streams.get("btcusdt@trade", ())) < 2:
                        await asyncio.sleep(0.01)
                    received = 0
                    sent = 0
                    # Incompressible 4 KB payloads: the stalled socket's buffers fill quickly.
                    while len(hub.streams["btcusdt@trade"]) == 2:
                        for _ in range(8):
                            blob = base64.b64encode(os.urandom(3000)).decode()
                            hub.publish("btcusdt@trade", {"e": "trade", "n": sent, "x": blob},
                                        "BTCUSDT")
                            sent += 1
                        while received < sent:       # the good client keeps up, in step
                            msg = json.loads((await good.receive()).data)
                            assert msg["n"] == received
                            received += 1
                        assert sent < 20_000, "the stalled client was never dropped"
                        await asyncio.sleep(0)
                    assert _sample(metrics, "exchange_ws_clients_dropped_total") == 1
                    # After the drop the good client still gets everything, in order.
                    for _ in range(10):
                        for _ in range(8):         # within the outbox, as a live feed is
                            hub.publish("btcusdt@trade", {"e": "trade", "n": sent}, "BTCUSDT")
                            sent += 1
                        while received < sent:
                            assert json.loads((await good.receive()).data)["n"] == received
                            received += 1
            while _sample(metrics, "exchange_ws_connections_active") > 0:
                await asyncio.sleep(0.05)      # both handlers finish: nothing leaks
        finally:
            stalled.close()
            await runner.cleanup()
    asyncio.run(main())


def test_shared_frames_decode_for_deflate_and_plain_clients():
    """One frame per wire form is shared by every client: clients that negotiated
    permessage-deflate (full and reduced window) and one that did not all decode every
    message, small, medium and over 64 KB, in order; the server imposed
    server_no_context_takeover, which is what makes a shared compressed frame valid."""
    async def main():
        app, runner, port = await _serve(outbox=4096)
        hub = app[HUB]
        url = f"http://127.0.0.1:{port}/ws/btcusdt@trade"
        try:
            async with aiohttp.ClientSession() as http:
                socks = [await http.ws_connect(url, compress=c) for c in (15, 10, 0)]
                socks.append(await http.ws_connect(
                    f"http://127.0.0.1:{port}/stream?streams=btcusdt@trade", compress=15))
                agreed = [s._response.headers.get("Sec-WebSocket-Extensions", "")
                          for s in socks]
                assert "server_no_context_takeover" in agreed[0]
                assert "server_max_window_bits=10" in agreed[1]
                assert "server_no_context_takeover" in agreed[1]
                assert agreed[2] == ""
                while len(hub.streams.get("btcusdt@trade", ())) < 4:
                    await asyncio.sleep(0.01)
                sent = []
                for n in range(60):
                    size = (0, 90, 300, 5000, 70_000)[n % 5]
                    data = {"e": "trade", "n": n, "pad": "ab" * (size // 2),
                            "rand": base64.b64encode(os.urandom(size // 8)).decode()}
                    hub.publish("btcusdt@trade", data, "BTCUSDT")
                    sent.append(data)
                    if n % 7 == 0:
                        await asyncio.sleep(0)          # some turns flush more than one
                for i, sock in enumerate(socks):
                    for data in sent:
                        got = json.loads((await sock.receive(timeout=10)).data)
                        want = {"stream": "btcusdt@trade", "data": data} if i == 3 else data
                        assert got == want
                for sock in socks:
                    await sock.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())


def _read_frames(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """(first header byte, payload) of `count` server frames, read off a raw socket."""
    buf, out = b"", []
    while len(out) < count:
        while True:
            n = buf[1] & 0x7F if len(buf) >= 2 else -1
            at = 4 if n == 126 else 10 if n == 127 else 2
            if n >= 0 and len(buf) >= at:
                if at > 2:
                    n = int.from_bytes(buf[2:at], "big")
                if len(buf) >= at + n:
                    out.append((buf[0], buf[at:at + n]))
                    buf = buf[at + n:]
                    break
            buf += sock.recv(65536)
    return out


def test_deflated_frames_inflate_with_one_persistent_context():
    """A browser-style client keeps one inflater for the whole connection (it may: the
    server's frames only have to be decodable in order). Every shared frame is final,
    RSV1-flagged, and inflates in sequence once the 00 00 ff ff tail is put back."""
    async def main():
        app, runner, port = await _serve(outbox=4096)
        hub = app[HUB]
        try:
            s = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /ws/ethusdt@trade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await asyncio.to_thread(s.recv, 1)
            assert b"server_no_context_takeover" in head
            while not hub.has("ethusdt@trade"):
                await asyncio.sleep(0.01)
            sent = [{"e": "trade", "n": n, "p": "1234.5" * (n % 9) * (n % 4) ** 4}
                    for n in range(40)]
            for data in sent:
                hub.publish("ethusdt@trade", data, "ETHUSDT")
            frames = await asyncio.to_thread(_read_frames, s, len(sent))
            inflater = zlib.decompressobj(-15)
            for (first, payload), data in zip(frames, sent, strict=True):
                assert first == 0xC1                     # FIN, RSV1 (deflated), text
                text = inflater.decompress(payload + b"\x00\x00\xff\xff")
                assert json.loads(text) == data
            s.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())
