"""Latency per stage of the order path, read from Kafka while a load runs.

Every record on the path carries the time the gateway received the request (`ts`, ms):
keel.requests (OrderRequest.ts), keel.orders (a Place's ts) and keel.events (the
envelope's ts, copied from the command). Against each record's Kafka timestamp (when its
producer wrote it) and the moment a read_committed reader sees it, that gives, for the
orders of the run, how long after the gateway received them:

  requests   the gateway had written the request       (gateway)
  orders     accounts had written the command          (+ accounts: fetch, risk, produce)
  events     the engine had written the event          (+ engine: fetch, match, produce)
  committed  a read_committed reader could see it      (+ the engine's transaction commit)

The client's order->fill adds the gateway's feed and WebSocket push on top. Only the
first fields of each record are read (the Avro varints up to `ts`), so this costs little
next to the load it watches. Milliseconds, from the producers' clocks (one machine).
"""
from __future__ import annotations

import threading
import time

HEADER = 10                      # single-object marker + schema fingerprint
HOPS = ("requests", "orders", "events", "committed")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """(zigzag-decoded long, next index)."""
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), i
        shift += 7


def _skip_string(buf: bytes, i: int) -> int:
    n, i = _varint(buf, i)
    return i + n


def request_ts(value: bytes) -> int | None:
    """OrderRequest: request_id, user_id, ts."""
    i = _skip_string(value, HEADER)
    _user, i = _varint(value, i)
    return _varint(value, i)[0]


def place_ts(value: bytes) -> int | None:
    """OrderCommand: request_id (null|string), command (Place is branch 0: pair, then nine
    ints/longs, then ts). Other commands: None."""
    branch, i = _varint(value, HEADER)
    if branch == 1:
        i = _skip_string(value, i)
    kind, i = _varint(value, i)
    if kind != 0:
        return None
    i = _skip_string(value, i)
    for _ in range(9):           # order_id user_id side kind tif price qty quote_qty stp
        _v, i = _varint(value, i)
    return _varint(value, i)[0]


def event_ts(value: bytes) -> int | None:
    """EngineEvent envelope: pair, seq, ts."""
    i = _skip_string(value, HEADER)
    _seq, i = _varint(value, i)
    return _varint(value, i)[0]


class StageClock:
    """A thread that tails the three topics (group-less, from their end) and keeps, per
    second of the run, each hop's latencies in ms. `cpu_s`: the thread's own CPU."""

    def __init__(self, bootstrap: str, prefix: str = "keel.") -> None:
        self.bootstrap = bootstrap
        self.topics = {f"{prefix}requests": ("requests", request_ts),
                       f"{prefix}orders": ("orders", place_ts),
                       f"{prefix}events": ("events", event_ts)}
        self.by_second: dict[int, dict[str, list[float]]] = {}
        self.started_ms = 0.0
        self.cpu_s = 0.0
        self.undecoded = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Tail from now; nothing counts until begin()."""
        self._thread = threading.Thread(target=self._run, name="keel-stage-clock", daemon=True)
        self._thread.start()

    def begin(self, wall: float) -> None:
        """Second 0 of the run, in wall-clock seconds (the producers' timestamps)."""
        self.started_ms = wall * 1000

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "keel-stage-clock",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 5,
                             "log_level": 0})
        try:
            meta = consumer.list_topics(timeout=5)
            consumer.assign([TopicPartition(t, p, OFFSET_END) for t in self.topics
                             if t in meta.topics for p in meta.topics[t].partitions])
            while not self._stop.is_set():
                # consume(n, timeout) waits out its timeout unless n records come: the
                # `committed` stage (stamped on arrival here) read up to 50 ms late.
                # poll returns at the first record, and the rest is taken without waiting.
                first = consumer.poll(0.05)
                if first is not None:
                    for msg in [first, *consumer.consume(1000, 0)]:
                        self._record(msg)
                self.cpu_s = time.thread_time()
        finally:
            consumer.close()

    def _record(self, msg) -> None:
        if msg.error() or msg.value() is None:
            return
        hop, read_ts = self.topics[msg.topic()]
        try:
            ts = read_ts(msg.value())
        except IndexError:
            self.undecoded += 1
            return
        if ts is None or not self.started_ms or ts < self.started_ms:
            return
        second = self.by_second.setdefault(int((ts - self.started_ms) / 1000),
                                           {h: [] for h in HOPS})
        second[hop].append(msg.timestamp()[1] - ts)
        if hop == "events":
            second["committed"].append(time.time() * 1000 - ts)

    def window(self, first: int, last: int) -> dict[str, list[float]]:
        """Every hop's latencies for the requests the gateway received in [first, last)."""
        out: dict[str, list[float]] = {h: [] for h in HOPS}
        for i in range(first, last):
            for h, values in self.by_second.get(i, {}).items():
                out[h].extend(values)
        return out
