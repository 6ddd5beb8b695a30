"""WebSocket streams: /ws (raw payloads), /stream (combined {"stream","data"} wrapper),
/ws/<listenKey> for a user's data stream, and the listenKey REST endpoints.

Control frames follow Binance: {"method": "SUBSCRIBE"|"UNSUBSCRIBE"|"LIST_SUBSCRIPTIONS",
"params": [...], "id": n}. Compression is permessage-deflate, always with
server_no_context_takeover so one compressed frame serves every client; pings keep idle
connections honest; stream frames are written by the hub from a bounded per-client queue,
so a stalled client is dropped instead of stalling anyone else (gateway.fanout).
"""
from __future__ import annotations

import asyncio
import json
import re
import time

from aiohttp import WSMsgType, hdrs, web

from gateway import errors
from gateway.context import CONFIG, HUB, LISTEN_KEYS, MARKETS, METRICS
from gateway.fanout import Subscriber
from gateway.market import INTERVALS
from gateway.public import json_response
from gateway.signed import api_key_principal

# Open stream sockets, closed "going away" when the gateway shuts down: otherwise every
# open WebSocket holds SIGTERM up for aiohttp's whole shutdown timeout.
SOCKETS = web.AppKey("ws_sockets", set)
_STREAM = re.compile(r"^([a-z0-9]+)@(trade|depth|depth@100ms|ticker|miniTicker|kline_(\w+))$")


def valid_stream(name: str, pairs: set[str]) -> bool:
    match = _STREAM.match(name)
    if match is None or match.group(1).upper() not in pairs:
        return False
    interval = match.group(3)
    return interval is None or interval in INTERVALS


class StreamSocket(web.WebSocketResponse):
    """A WebSocketResponse that answers a permessage-deflate offer with
    server_no_context_takeover even when the client did not ask for it (RFC 7692 7.1.1.1
    lets the server choose): each message is then compressed on its own, and the hub can
    send the same compressed frame to every client."""

    def _handshake(self, request):
        headers, protocol, compress, notakeover = super()._handshake(request)
        if compress and not notakeover:
            ext = headers[hdrs.SEC_WEBSOCKET_EXTENSIONS]
            headers[hdrs.SEC_WEBSOCKET_EXTENSIONS] = f"{ext}; server_no_context_takeover"
            notakeover = True
        return headers, protocol, compress, notakeover


async def _serve(request: web.Request, combined: bool, streams: list[str],
                 user_id: int | None = None) -> web.WebSocketResponse:
    app = request.app
    config = app[CONFIG]
    hub = app[HUB]
    pairs = set(app[MARKETS].markets)
    for name in streams:
        if not valid_stream(name, pairs):
            raise errors.ApiError(-1100, f"Invalid stream name '{name}'.")
    ws = StreamSocket(heartbeat=config.ws_heartbeat_s, compress=True,
                      max_msg_size=64 * 1024)
    await ws.prepare(request)
    # Stream frames go straight to the socket, whole frames per write, from the hub;
    # aiohttp's writer keeps the control frames (ping, pong, close).
    sub = Subscriber(request.transport, combined, config.ws_outbox, int(ws.compress))
    for name in streams:
        hub.subscribe(sub, name)
    if user_id is not None:
        hub.attach_user(sub, user_id)
    metrics = app[METRICS]
    metrics.ws_active.inc()
    sockets = app.get(SOCKETS)
    if sockets is not None:
        sockets.add(ws)
    loop = asyncio.get_running_loop()
    sub.on_drop = lambda: loop.create_task(_close_dropped(ws, request))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            reply = _control(msg.data, sub, hub, pairs, config.max_streams)
            if reply is not None and not hub.send_text(sub, json.dumps(reply)):
                break
            if sub.dropped:
                break
    finally:
        hub.remove(sub)
        sub.dropped = True               # nothing more is written to this socket
        if sockets is not None:
            sockets.discard(ws)
        metrics.ws_active.dec()
        await ws.close()
    return ws


async def _close_dropped(ws: web.WebSocketResponse, request: web.Request) -> None:
    """Too slow: stop writing, say why ("policy violation"); a client that cannot even take
    the close frame within a second has its connection aborted."""
    closing = asyncio.ensure_future(
        ws.close(code=1008, message=b"too slow: send buffer full"))
    closing.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.wait({closing}, timeout=1.0)
    transport = request.transport
    for _ in range(20):
        if transport is None or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.05)
    else:
        transport.abort()          # it never drained: no goodbye is possible
    if transport is not None and not transport.is_closing():
        transport.close()


def _control(text: str, sub: Subscriber, hub, pairs: set[str], max_streams: int) -> dict | None:
    try:
        frame = json.loads(text)
    except ValueError:
        return {"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}
    if not isinstance(frame, dict):
        return {"error": {"code": 3, "msg": "Invalid request"}, "id": None}
    ident = frame.get("id")
    method = frame.get("method")
    params = frame.get("params", [])
    if method == "LIST_SUBSCRIPTIONS":
        return {"result": sorted(sub.streams), "id": ident}
    if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
        return {"error": {"code": 1, "msg": "Invalid method or params"}, "id": ident}
    bad = [p for p in params if not isinstance(p, str) or not valid_stream(p, pairs)]
    if bad:
        return {"error": {"code": 2, "msg": f"Invalid stream name: {bad[0]}"}, "id": ident}
    if method == "SUBSCRIBE":
        if len(sub.streams | set(params)) > max_streams:
            return {"error": {"code": 2, "msg": "Too many streams"}, "id": ident}
        for name in params:
            hub.subscribe(sub, name)
    else:
        for name in params:
            hub.unsubscribe(sub, name)
    return {"result": None, "id": ident}


async def raw_ws(request: web.Request) -> web.StreamResponse:
    return await _serve(request, False, [])


async def raw_ws_path(request: web.Request) -> web.StreamResponse:
    """/ws/<stream>[/<stream>...] or /ws/<listenKey>."""
    tail = request.match_info["tail"]
    if "@" not in tail:
        owner = request.app[LISTEN_KEYS].owner(tail, time.time())
        if owner is None:
            raise errors.invalid_listen_key()
        return await _serve(request, False, [], user_id=owner)
    return await _serve(request, False, [s for s in tail.split("/") if s])


async def combined(request: web.Request) -> web.StreamResponse:
    names = request.query.get("streams", "")
    return await _serve(request, True, [s for s in names.split("/") if s])


async def listen_key_new(request: web.Request) -> web.Response:
    principal = await api_key_principal(request)
    key = request.app[LISTEN_KEYS].issue(principal.user_id, time.time())
    return json_response({"listenKey": key})


async def listen_key_keepalive(request: web.Request) -> web.Response:
    principal = await api_key_principal(request)
    keys = request.app[LISTEN_KEYS]
    key = request.query.get("listenKey", "")
    if keys.owner(key, time.time()) != principal.user_id:
        raise errors.invalid_listen_key()
    if request.method == "DELETE":
        keys.revoke(key, time.time())
    return json_response({})


async def close_all(app: web.Application) -> None:
    """on_shutdown: every open stream is told the server is going away (1001)."""
    sockets = list(app[SOCKETS])
    if sockets:
        await asyncio.wait([asyncio.ensure_future(ws.close(code=1001, message=b"shutting down"))
                            for ws in sockets], timeout=2.0)


def add_routes(app: web.Application) -> None:
    app[SOCKETS] = set()
    app.on_shutdown.append(close_all)
    app.router.add_get("/ws", raw_ws)
    app.router.add_get("/ws/{tail:.+}", raw_ws_path)
    app.router.add_get("/stream", combined)
    app.router.add_post("/api/v3/userDataStream", listen_key_new)
    app.router.add_put("/api/v3/userDataStream", listen_key_keepalive)
    app.router.add_delete("/api/v3/userDataStream", listen_key_keepalive)
