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
        at, size, n = 0, len(buf), 0
        while size - at >= 2:
            op, length = buf[at] & 0x0F, buf[at + 1] & 0x7F
            head = 2
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
                if (self.count + n) % 1000 == 1:
                    json.loads(buf[at + head:at + head + length])["e"]   # noqa: B018
                    self.checked += 1
            elif op == 9:                   # ping: answer pong (masked, empty)
                self.transport.write(b"\x8a\x80\x00\x00\x00\x00")
            at += head + length
        self.buf = buf[at:]
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
        for msg in consumer.consume(500, 0.05):
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


def main() -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("public", "ws", "replier"))
    parser.add_argument("--topic-prefix", default="keel.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--ws-clients", type=int, default=1000)
    parser.add_argument("--path", default="/ws/solusdt@trade")
    args = parser.parse_args()
    cpu = time.process_time()
    if args.kind == "replier":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        out = _replier(args.url, args.topic_prefix)
        out["cpu_s"] = round(time.process_time() - cpu, 2)
        print(json.dumps(out), flush=True)
        return 0
    host, port = args.url.split("//")[1].split(":")
    if args.kind == "public":
        out = uvloop.run(_client_public(host, int(port), args.seconds, args.conns))
    else:
        out = uvloop.run(_client_ws(host, int(port), args.path, args.ws_clients))
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
