"""Load clients for bench/gateway.py, each run in a process of its own.

aiohttp's client spends more CPU per request than the gateway does per answer; on two
shared cores it would measure itself. These keep-alive clients write pre-built request
bytes and parse only what they must (status and Content-Length; WebSocket frame headers),
so the figures are the gateway's.

    gateway_load.py public --url http://127.0.0.1:PORT [--seconds 3] [--conns 32]
        GETs back to back on each connection; prints {"ok", "bad", "elapsed", "cpu_s"}
    gateway_load.py ws --url ... [--ws-clients 1000] [--path /ws/solusdt@trade]
        connects every client, prints "ready", reads "go" then the number of messages
        published on stdin, counts text frames until all arrived (or 10 s); prints
        {"received", "expected", "elapsed", "checked", "cpu_s"}
    gateway_load.py orders --url ... --key K[,K2..] --secret S[,S2..]
        --params 'symbol=..&price={m}.00'
        [--conns 64] [--seconds 3] [--rate R] [--listen-key L]
        signed POST /api/v3/order on keep-alive connections ({n}: the order's number,
        {m}: 1000 + n % 50, {cid}: --cid-prefix and n). Without --rate each connection sends back to back (capacity);
        with --rate orders are due at R/s, each sent on a free connection (latency), its
        latency counted from when it was due, so a stall is not hidden ("late": orders
        that found every connection busy). With
        --listen-key the user's stream is read too and each order (newClientOrderId
        {cid}) is timed to its first TRADE executionReport. Prints {"ok", "bad",
        "elapsed", "ack_ms", "e2e_ms", "late", "cpu_s"}
    gateway_load.py serve --url http://127.0.0.1:PORT
        not a client: a bare aiohttp app (uvloop, no access log, as the gateway runs) that
        answers PUBLIC_PATHS with fixed bodies of the gateway's shape, until SIGTERM: the
        framework's own cost under the public phase (bench/gateway.py --floor)
    gateway_load.py replier --url BOOTSTRAP --topic-prefix P
        stands in for accounts, answering every keel.requests record at once with an OK
        reply (no funds, no engine): what is left of an order's cost is the gateway's.
        Runs until stdin closes; prints {"replied", "cpu_s"}
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time

PUBLIC_PATHS = ("/api/v3/depth?symbol=BTCUSDT&limit=5", "/api/v3/ticker/price?symbol=BTCUSDT")


class _HttpLoad(asyncio.Protocol):
    """One keep-alive connection sending GETs back to back, counting 200 answers."""

    def __init__(self, requests: list[bytes], stop_at: float, done: asyncio.Future) -> None:
        self.requests, self.stop_at, self.done = requests, stop_at, done
        self.buf = b""
        self.ok = self.bad = self.n = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.requests[0])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            if head[9:12] == b"200":
                self.ok += 1
            else:
                self.bad += 1
            self.buf = self.buf[end + 4 + length:]
            self.n += 1
            if time.perf_counter() >= self.stop_at:
                self.transport.close()
                return
            self.transport.write(self.requests[self.n % len(self.requests)])

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _client_public(host: str, port: int, seconds: float, conns: int) -> dict:
    loop = asyncio.get_running_loop()
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for p in PUBLIC_PATHS]
    stop_at = time.perf_counter() + seconds
    protos = []
    started = time.perf_counter()
    for i in range(conns):
        done = loop.create_future()
        _, proto = await loop.create_connection(
            lambda d=done, i=i: _HttpLoad(requests[i % 2:] + requests[:i % 2], stop_at, d),
            host, port)
        protos.append(proto)
    await asyncio.gather(*(p.done for p in protos))
    elapsed = time.perf_counter() - started
    return {"ok": sum(p.ok for p in protos), "bad": sum(p.bad for p in protos),
            "elapsed": elapsed}


def _frames(buf: bytes, seen: int, every: int) -> tuple[int, list, int, int]:
    """The complete server frames at the start of `buf`: (text frames, the (start, end)
    payload spans of those whose running number (after `seen`) is 1 modulo `every`, pings,
    bytes used). Spans rather than a call per frame: at millions of frames a second the
    client's walk is what the WS phase measures if it costs more."""
    at, size, n, pings, spans, pick = 0, len(buf), 0, 0, [], 1 % every
    while size - at >= 2:
        op, length, head = buf[at] & 0x0F, buf[at + 1] & 0x7F, 2
        if length == 126:
            if size - at < 4:
                break
            length, head = int.from_bytes(buf[at + 2:at + 4]), 4
        elif length == 127:
            if size - at < 10:
                break
            length, head = int.from_bytes(buf[at + 2:at + 10]), 10
        if size - at < head + length:
            break
        if op == 1:
            n += 1
            if (seen + n) % every == pick:
                spans.append((at + head, at + head + length))
        elif op == 9:
            pings += 1
        at += head + length
    return n, spans, pings, at


def _pong(transport, pings: int) -> None:
    """Answer each ping with a pong (masked, empty), as a client must."""
    if pings:
        transport.write(b"\x8a\x80\x00\x00\x00\x00" * pings)


class _WsCount(asyncio.Protocol):
    """A WebSocket client (no compression offered) that counts text frames by their
    headers; every 1000th payload is parsed to check it is what was published."""

    def __init__(self, path: str, host: str, ready: asyncio.Future) -> None:
        self.path, self.host, self.ready = path, host, ready
        self.buf = b""
        self.upgraded = False
        self.count = 0
        self.last = 0.0
        self.checked = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101 " not in buf[:end]:
                self.ready.set_exception(RuntimeError(buf[:end].decode()))
                return
            self.upgraded = True
            self.ready.set_result(None)
            buf = buf[end + 4:]
        n, sampled, pings, used = _frames(buf, self.count, 1000)
        for start, end in sampled:
            json.loads(buf[start:end])["e"]   # noqa: B018
            self.checked += 1
        _pong(self.transport, pings)
        self.buf = buf[used:]
        if n:
            self.count += n
            self.last = time.perf_counter()


async def _client_ws(host: str, port: int, path: str, clients: int) -> dict:
    loop = asyncio.get_running_loop()
    protos = []
    for _ in range(clients):
        ready = loop.create_future()
        _, proto = await loop.create_connection(lambda r=ready: _WsCount(path, host, r),
                                                host, port)
        await ready
        protos.append(proto)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    await reader.readline()                             # "go": the producer starts
    started = time.perf_counter()
    expected = int(await reader.readline()) * clients   # trades produced
    deadline = time.monotonic() + 10
    while sum(p.count for p in protos) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    received = sum(p.count for p in protos)
    ended = max(p.last for p in protos) if received else time.perf_counter()
    for p in protos:
        p.transport.close()
    return {"received": received, "expected": expected, "elapsed": ended - started,
            "checked": sum(p.checked for p in protos)}


class _OrderConn(asyncio.Protocol):
    """One keep-alive connection carrying one signed order at a time."""

    def __init__(self, on_answer) -> None:
        self.on_answer = on_answer
        self.buf = b""
        self.due = 0.0
        self.user = 0                   # which of --key/--secret it signs as
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.opened.set_result(None)

    def send(self, request: bytes, due: float) -> None:
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end]
        at = head.lower().find(b"content-length:")
        length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        self.on_answer(self, head[9:12] == b"200", body)


class _UserStream(asyncio.Protocol):
    """The user's WebSocket stream: the first TRADE executionReport of each timed order."""

    def __init__(self, path: str, host: str, sent: dict, fills: list) -> None:
        self.path, self.host, self.sent, self.fills = path, host, sent, fills
        self.ready = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.upgraded = False
        self.frames = 0
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.upgraded = True
            self.ready.set_result(None)
            buf = buf[end + 4:]
        n, texts, pings, used = _frames(buf, 0, 1)
        self.frames += n
        for start, end in texts:
            m = json.loads(buf[start:end])
            if m.get("e") == "executionReport" and m.get("x") == "TRADE":
                due = self.sent.pop(m.get("c"), None)
                if due is not None:
                    self.fills.append((now - due) * 1000)
        _pong(self.transport, pings)
        self.buf = buf[used:]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    v = sorted(values)
    return {"p50": round(v[len(v) // 2], 2), "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))], 2),
            "max": round(v[-1], 2), "n": len(v)}


async def _client_orders(host: str, port: int, args) -> dict:
    """Signed orders, closed loop (capacity) or paced at --rate (latency)."""
    import hashlib
    import hmac

    loop = asyncio.get_running_loop()
    # --key/--secret may name several users (comma-separated): connection i signs as user
    # i % their number, so no one account holds more than its share of resting orders.
    secrets = [x.encode() for x in args.secret.split(",")]
    heads = [f" HTTP/1.1\r\nHost: {host}\r\nX-MBX-APIKEY: {key}\r\n"
             "Content-Length: 0\r\n\r\n" for key in args.key.split(",")]
    assert len(heads) == len(secrets), "as many --secret as --key"

    def request(n: int, conn: _OrderConn) -> bytes:
        text = (args.params.format(n=n, m=1000 + n % 50, cid=f"{args.cid_prefix}{n}")
                + f"&timestamp={time.time_ns() // 1_000_000}")
        sig = hmac.new(secrets[conn.user], text.encode(), hashlib.sha256).hexdigest()
        return f"POST /api/v3/order?{text}&signature={sig}{heads[conn.user]}".encode()

    sent: dict[str, float] = {}         # client order id -> when it was due
    fills: list[float] = []
    stream = None
    if args.listen_key:
        _, stream = await loop.create_connection(
            lambda: _UserStream(f"/ws/{args.listen_key}", host, sent, fills), host, port)
        await stream.ready
    acks: list[float] = []
    bad: list[bytes] = []
    free: list[_OrderConn] = []
    waiting: asyncio.Future | None = None
    counter = iter(range(10**9))
    closed_loop = not args.rate
    stop_at = 0.0

    def on_answer(conn: _OrderConn, ok: bool, body: bytes) -> None:
        nonlocal waiting
        now = time.perf_counter()
        if ok:
            acks.append((now - conn.due) * 1000)
        else:
            bad.append(body)
        if closed_loop:
            if now < stop_at:
                conn.send(request(next(counter), conn), now)
            else:
                free.append(conn)
            return
        free.append(conn)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    conns = []
    for i in range(args.conns):
        _, conn = await loop.create_connection(lambda: _OrderConn(on_answer), host, port)
        await conn.opened
        conn.user = i % len(heads)
        conns.append(conn)
    started = time.perf_counter()
    stop_at = started + args.seconds
    late = 0
    lags: list[float] = []              # how late each paced order went out (this client)
    if closed_loop:
        for conn in conns:
            conn.send(request(next(counter), conn), time.perf_counter())
    else:
        free.extend(conns)
        total = int(args.rate * args.seconds)
        for i in range(total):
            due = started + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if not free:                # every connection busy: the stack is behind
                late += 1
                while not free:
                    waiting = loop.create_future()
                    await waiting
            lags.append((time.perf_counter() - due) * 1000)
            n = next(counter)
            if stream is not None:
                sent[f"{args.cid_prefix}{n}"] = due
            conn = free.pop()
            conn.send(request(n, conn), due)
    deadline = time.perf_counter() + args.seconds + 10
    while len(free) < len(conns) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    answered = len(acks) + len(bad)
    dropped = False
    if stream is not None:
        deadline = time.perf_counter() + 10
        while sent and len(fills) < len(acks) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        dropped = stream.closed             # by the gateway (a slow client), not by us
        stream.transport.close()
    for conn in conns:
        conn.transport.close()
    sent_n = next(counter)
    return {"ok": len(acks), "bad": len(bad), "sent": sent_n, "answered": answered,
            "elapsed": elapsed, "late": late, "send_lag_ms": _percentiles(lags),
            "ack_ms": _percentiles(acks),
            "e2e_ms": _percentiles(fills) if stream is not None else None,
            "stream": {"frames": stream.frames, "dropped": dropped}
            if stream is not None else None,
            "unfilled": sorted(sent)[:20] if stream is not None else [],
            "first_bad": bad[0].decode(errors="replace")[:200] if bad else None}


def _replier(bootstrap: str, prefix: str) -> dict:
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition

    from schemas.codec import Codec

    codec = Codec(topic_prefix=prefix)
    conf = {"bootstrap.servers": bootstrap, "group.id": "bench-replier",
            "enable.auto.commit": False, "fetch.wait.max.ms": 5}
    consumer = Consumer(conf)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    topic = f"{prefix}requests"
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # From the end: only requests sent from now on are answered.
    consumer.assign([TopicPartition(topic, p, -1) for p in parts])
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    replied, order_id = 0, 10**12
    print("ready", flush=True)
    while not closed.is_set():
        # consume() waits out its whole timeout unless the batch fills: block on the first
        # record only, or every reply would wait ~50 ms here and the figure be the replier's
        first = consumer.poll(0.05)
        if first is None:
            producer.poll(0)
            continue
        for msg in [first, *consumer.consume(500, 0)]:
            if msg.error() is not None or msg.value() is None:
                continue
            req = codec.decode("order_request", msg.value())
            kind, body = req["body"]
            order_id += 1
            reply = {"request_id": req["request_id"], "user_id": req["user_id"],
                     "ts": req["ts"], "code": 0, "message": "", "pair": body.get("pair"),
                     "order_id": order_id, "client_order_id": body.get("client_order_id")}
            producer.produce(f"{prefix}replies", codec.encode("reply", reply),
                             key=req["request_id"].encode())
            replied += 1
        producer.poll(0)
    producer.flush(5)
    consumer.close()
    return {"replied": replied}


def _serve(host: str, port: int) -> None:
    """The `serve` kind (module docstring)."""
    import signal

    import uvloop
    from aiohttp import web

    levels = ",".join(f'["6500{i}.00","0.{i + 1}0000000"]' for i in range(5))
    bodies = {
        "/api/v3/depth": f'{{"lastUpdateId":123456,"bids":[{levels}],"asks":[{levels}]}}',
        "/api/v3/ticker/price": '{"symbol":"BTCUSDT","price":"65000.00"}',
    }

    def answer(body: str):
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=body, content_type="application/json")
        return handler

    app = web.Application()
    for path, body in bodies.items():
        app.router.add_get(path, answer(body))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    web.run_app(app, host=host, port=port, print=None, access_log=None,
                handle_signals=False, loop=uvloop.new_event_loop())


def main() -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("public", "ws", "orders", "replier", "serve"))
    parser.add_argument("--topic-prefix", default="keel.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--ws-clients", type=int, default=1000)
    parser.add_argument("--path", default="/ws/solusdt@trade")
    parser.add_argument("--key", help="orders: API key")
    parser.add_argument("--secret", help="orders: API secret")
    parser.add_argument("--params", help="orders: query without timestamp/signature")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="orders: orders due per second (0: back to back per connection)")
    parser.add_argument("--cid-prefix", default="e2e")
    parser.add_argument("--listen-key", help="orders: time each order to its fill on this "
                        "user stream")
    args = parser.parse_args()
    cpu = time.process_time()
    if args.kind == "replier":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        out = _replier(args.url, args.topic_prefix)
        out["cpu_s"] = round(time.process_time() - cpu, 2)
        print(json.dumps(out), flush=True)
        return 0
    host, port = args.url.split("//")[1].split(":")
    if args.kind == "serve":
        _serve(host, int(port))
        return 0
    if args.kind == "public":
        out = uvloop.run(_client_public(host, int(port), args.seconds, args.conns))
    elif args.kind == "orders":
        out = uvloop.run(_client_orders(host, int(port), args))
    else:
        out = uvloop.run(_client_ws(host, int(port), args.path, args.ws_clients))
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
