"""Streams benchmark on a real broker: the accounts risk gate and market data workers.

    .venv/bin/python bench/streams.py [--json] [--bootstrap HOST:PORT]
                                      [--requests 100000] [--rate 2000] [--seconds 10]
                                      [--only accounts|latency|bare|marketdata]

Starts its own in-memory tansu broker unless --bootstrap is given; each phase uses fresh
topics (its own KEEL_TOPIC_PREFIX) and real `keel streams ROLE` worker processes.
  accounts_msgs_per_s    --requests requests (deposits, then limit orders of 200 users)
                         preloaded on keel.requests, then one accounts worker drains them:
                         the requests answered after the reader's first poll that returned
                         replies / time from that poll to the last reply (the first poll's
                         replies are a whole batch whose work precedes the stretch: counted
                         in, they made a 20,000-request drain read ~1.3x high);
  accounts_cpu_us_per_msg  the worker's CPU time over the same stretch, per request answered
                         in it;
  accounts_broker_cpu_us_per_msg  the broker's (its own broker only), likewise;
  accounts_steady_msgs_per_s  the same drain from the poll that brought its replies past
                         a quarter of the requests to the last (work done before the
                         first reply counts in neither requests nor time).
  added_latency_p99_ms   a running accounts worker offered --rate orders/s for --seconds:
                         per order, time from producing the request to reading its Place on
                         keel.orders (read_committed; the reader's own fetch wait is 1 ms);
  latency_cpu_us_per_msg   the worker's CPU time over that stretch, per order.
  request_ack_p50_ms/_p99_ms  of that latency, the request's own trip into the broker:
                         from its CreateTime to the bench producer's acknowledgement (seen
                         when the bench next polls). Before then the worker cannot see it;
                         on a loaded broker this term is large and is not the worker's.
  bare_latency_p50_ms/_p99_ms  (--only bare, or --bare) the latency phase with no accounts
                         worker: the same feeder, rate and reader; in the worker's place a
                         relay process makes the gate's least broker work per fetch, in its
                         crash-safe order (one state record acknowledged, then each request's
                         bytes copied to keel.orders and acknowledged, then the offsets
                         committed), no decoding and no rules. Time from producing a request
                         to reading its copy. Its p50 is the floor under added_latency_p50_ms
                         on this broker and machine. Its p99 is not a floor: the relay does
                         not widen its fetch wait when tansu starves it (infra.fetchwait),
                         as the worker does, so it also carries those stalls.
  marketdata_msgs_per_s  engine events (accepts and trades on 3 pairs) preloaded on
                         keel.events, one marketdata worker drains them: events / time
                         from its first to its last committed ticker.
With --json the last line is one JSON object, with the 1-minute load average at the end
(`load_avg_1m`): on a shared machine the wall figures follow it, the CPU figures much less.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import keel from the repo root, and not this file as `streams`.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from confluent_kafka import Consumer, Producer

from engine.domain import Accepted, Trade
from engine.markets import load_markets
from infra import topics
from infra.embedded import stop_child
from infra.kafka import admin_client, consumer_config, producer_config
from infra.settings import DEFAULT_MARKETS, Settings
from schemas.codec import Codec
from streams.keys import user_key, user_partition

MARKETS = load_markets(DEFAULT_MARKETS)
MIDS = {"BTCUSDT": 6_500_000, "ETHUSDT": 350_000, "SOLUSDT": 15_000}
QTY = {"BTCUSDT": 10, "ETHUSDT": 20, "SOLUSDT": 40}
USERS = 200


def fresh(bootstrap: str, data: Path) -> Settings:
    settings = Settings(data_dir=data / uuid.uuid4().hex[:6], kafka_bootstrap=bootstrap,
                        topic_prefix=f"b{uuid.uuid4().hex[:8]}.", user_partitions=4)
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, MARKETS))
    assert all(o.ok for o in outcomes), outcomes
    return settings


def worker(settings: Settings, role: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KEEL_KAFKA_BOOTSTRAP": settings.bootstrap,
           "KEEL_TOPIC_PREFIX": settings.topic_prefix, "KEEL_DATA_DIR": str(settings.data_dir),
           "KEEL_USER_PARTITIONS": str(settings.user_partitions)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "infra.cli", "streams", role,
                                 "--metrics-port", "0"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)


def stop(proc: subprocess.Popen) -> None:
    stop_child(proc, timeout=30)


def request(rid: str, uid: int, ts: int, what: str, **body) -> dict:
    return {"request_id": rid, "user_id": uid, "ts": ts, "body": (f"keel.{what}", body)}


def order(n: int, ts: int) -> dict:
    pair = ("BTCUSDT", "ETHUSDT", "SOLUSDT")[n % 3]
    side = n // 3 % 2
    price = MIDS[pair] + (n % 7 - 3) * (1 if side == 0 else -1)
    return request(f"o{n}", n % USERS + 1, ts, "PlaceOrder", pair=pair, side=side, kind=0,
                   tif=0, price=price, qty=QTY[pair], quote_qty=0, stp=0,
                   client_order_id=None)


def deposits(ts: int) -> list[dict]:
    return [request(f"d{uid}{a}", uid, ts, "Deposit", asset=a, amount=10**16, reference=None)
            for uid in range(1, USERS + 1) for a in ("USDT", "BTC", "ETH", "SOL")]


def produce_requests(producer: Producer, settings: Settings, codec: Codec, reqs) -> None:
    topic, n = settings.topic("requests"), settings.user_partitions
    for req in reqs:
        uid = req["user_id"]
        while True:
            try:
                producer.produce(topic, key=user_key(uid), partition=user_partition(uid, n),
                                 value=codec.encode("order_request", req))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)


def reader(settings: Settings, short: str, **overrides) -> Consumer:
    c = Consumer(consumer_config(settings, f"bench-{uuid.uuid4().hex[:8]}", **overrides))
    c.subscribe([settings.topic(short)])
    return c


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# How long a drain's reader waits per poll. consume(n, timeout) returns only when it has n
# records or the timeout has passed, so the time a record is seen is late by up to this:
# at 0.2 s (before 2026-11-23) the first and last replies of a ~1.6 s drain each carried
# up to 0.2 s, and rates came in steps of ~10%.
POLL_S = 0.005


def drain(consumer: Consumer, count: int, deadline_s: float,
          on_first=None, seen_at: list | None = None) -> tuple[float, float]:
    """Read `count` records; (wall time of the first, of the last). `seen_at` gets
    (time, records read so far) at each poll that returned some."""
    first = last = 0.0
    seen = 0
    deadline = time.monotonic() + deadline_s
    while seen < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {seen} of {count} records within {deadline_s} s")
        msgs = [m for m in consumer.consume(10_000, POLL_S) if m.error() is None]
        if msgs:
            now = time.monotonic()
            if not first and on_first is not None:
                on_first()
            first = first or now
            last = now
            seen += len(msgs)
            if seen_at is not None:
                seen_at.append((now, seen))
    return first, last


# The steady-state drain rate leaves out the first quarter of the replies: whatever the
# worker did before its first reply (buffering, or with KEEL_ACCOUNTS_PIPELINE=1 handling
# the next batch while the first one's round trips ran) counts in the main figure's
# requests but not its time.
STEADY_FROM = 0.25


def steady_rate(seen_at: list, count: int) -> float:
    """Records per second from the poll that passed STEADY_FROM of `count` to the last."""
    start = next((t, n) for t, n in seen_at if n >= STEADY_FROM * count)
    end = seen_at[-1]
    return (end[1] - start[1]) / max(end[0] - start[0], 1e-9)


def bench_accounts(bootstrap: str, data: Path, n: int,
                   broker: subprocess.Popen | None = None) -> tuple:
    settings = fresh(bootstrap, data)
    codec = Codec()
    producer = Producer(producer_config(settings, "bench", linger_ms=20))
    ts = int(time.time() * 1000)
    reqs = deposits(ts) + [order(i, ts) for i in range(n)]
    produce_requests(producer, settings, codec, reqs)
    assert producer.flush(60) == 0
    # a short fetch wait: tansu looks again for a fetch that found nothing only after
    # half the wait (500 ms by default), which would make the reader see a batch late
    replies = reader(settings, "replies", fetch_wait_max_ms=5)
    proc = worker(settings, "accounts", data / "accounts-throughput.log")
    cpu: list[float] = []
    pids = [proc.pid] + ([broker.pid] if broker is not None else [])

    def stamp() -> None:
        cpu.extend(cpu_seconds(pid) for pid in pids)
    seen_at: list = []
    try:
        first, last = drain(replies, len(reqs), 600, on_first=stamp, seen_at=seen_at)
        stamp()
    finally:
        stop(proc)
        replies.close()
    # the first poll that returned replies already held a whole committed batch; the CPU
    # figure (the worker's own, from its first to its last reply) is what a loaded
    # machine changes least
    answered = len(reqs) - seen_at[0][1]        # after the first poll that had replies
    half = len(cpu) // 2
    used = [1e6 * (cpu[half + i] - cpu[i]) / answered for i in range(half)]
    return (answered / max(last - first, 1e-9), used[0], (used[1] if half > 1 else None),
            steady_rate(seen_at, len(reqs)))


def relay(settings: Settings, log: Path) -> subprocess.Popen:
    """The bare relay (`bare_latency_*`): this file run with --relay, in its own process
    as a worker is."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, __file__, "--relay", settings.bootstrap,
                                 settings.topic_prefix, str(settings.user_partitions)],
                                stdout=out, stderr=subprocess.STDOUT, process_group=0)


def run_relay(bootstrap: str, prefix: str, user_partitions: int) -> None:
    """The gate's broker work with nothing else: per fetch of keel.requests, one state
    record (acknowledged before any output, as the accounts changelog is), then every
    request's bytes to keel.orders (acknowledged), then the offsets committed. Read as
    the worker reads (read_uncommitted, Faust's default fetch wait in Keel: 10 ms);
    written as it writes (idempotent, acks=all, no Nagle)."""
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix,
                        user_partitions=user_partitions)
    consumer = Consumer(consumer_config(settings, f"bench-relay-{uuid.uuid4().hex[:6]}",
                                        isolation_level="read_uncommitted",
                                        fetch_wait_max_ms=10))
    consumer.subscribe([settings.topic("requests")])
    state = Producer(producer_config(settings, "bench-relay-state", linger_ms=0,
                                     socket_nagle_disable=True))
    outputs = Producer(producer_config(settings, "bench-relay", linger_ms=0,
                                       socket_nagle_disable=True))
    orders, balances = settings.topic("orders"), settings.topic("balances")
    spread = MARKETS.partitions
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        first = consumer.poll(0.1)
        if first is None:
            continue
        msgs = [m for m in [first] + consumer.consume(MAX_RELAY_BATCH, 0) if m.error() is None]
        if not msgs:
            continue
        state.produce(balances, b"s" * 64, b"relay", 0)
        state.flush()
        for i, m in enumerate(msgs):
            outputs.produce(orders, m.value(), m.key(), i % spread)
        outputs.flush()
        consumer.commit(asynchronous=True)


MAX_RELAY_BATCH = 5_000      # the accounts worker's MAX_BATCH


def bench_latency(bootstrap: str, data: Path, rate: int, seconds: float,
                  bare: bool = False) -> dict:
    """Offer `rate` orders/s to an accounts worker (or with `bare` the relay) for
    `seconds`; per order, time from producing its request to reading its command."""
    settings = fresh(bootstrap, data)
    codec = Codec()
    if bare:        # the relay copies the request itself
        def request_id(value: bytes) -> str:
            return codec.decode("order_request", value)["request_id"]
    else:
        def request_id(value: bytes) -> str:
            return codec.decode_command(value)[1]
    acked: list[float] = []      # request CreateTime -> acknowledged by the broker (s)

    def delivered(err, msg) -> None:
        if err is None:
            acked.append(time.time() - msg.timestamp()[1] / 1000)

    producer = Producer(producer_config(settings, "bench", linger_ms=0,
                                        on_delivery=delivered))
    # tansu holds a fetch for its whole max wait (librdkafka's default 500 ms) when the
    # partition has nothing new: the reader must not add its own wait to the figure.
    orders = reader(settings, "orders", fetch_wait_max_ms=1)
    proc = relay(settings, data / "relay.log") if bare else \
        worker(settings, "accounts", data / "accounts-latency.log")
    try:
        ts = int(time.time() * 1000)
        produce_requests(producer, settings, codec, deposits(ts))
        producer.flush(30)
        if bare:
            drain(orders, USERS * 4, 300)         # the relay is up (deposits copied)
        else:
            replies = reader(settings, "replies")
            drain(replies, USERS * 4, 300)        # the worker is up and funded
            replies.close()
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        total = int(rate * seconds)
        cpu_before = cpu_seconds(proc.pid)
        start = time.monotonic()
        i = 0
        while i < total or len(latencies) < total:
            now = time.monotonic()
            due = min(total, int((now - start) * rate))
            while i < due:
                req = order(i, int(time.time() * 1000))
                sent_at[req["request_id"]] = time.monotonic()
                produce_requests(producer, settings, codec, [req])
                i += 1
            for m in orders.consume(10_000, 0.001):
                if m.error() is None:
                    latencies.append(time.monotonic() - sent_at[request_id(m.value())])
            if now - start > seconds + 120:
                break
        cpu_us = 1e6 * (cpu_seconds(proc.pid) - cpu_before) / max(len(latencies), 1)
        latencies.sort()
        trip = sorted(acked[-total:])

        def pct(values, p):
            return round(1000 * values[min(len(values) - 1, int(p * len(values)))], 2)
        if bare:
            return {"bare_latency_p50_ms": pct(latencies, 0.50),
                    "bare_latency_p99_ms": pct(latencies, 0.99),
                    "bare_request_ack_p50_ms": pct(trip, 0.50),
                    "bare_request_ack_p99_ms": pct(trip, 0.99)}
        return {"added_latency_p50_ms": pct(latencies, 0.50),
                "added_latency_p99_ms": pct(latencies, 0.99),
                "latency_orders": len(latencies), "offered_orders_per_s": rate,
                "latency_cpu_us_per_msg": round(cpu_us, 1),
                "request_ack_p50_ms": pct(trip, 0.50), "request_ack_p99_ms": pct(trip, 0.99)}
    finally:
        stop(proc)
        orders.close()


def bench_marketdata(bootstrap: str, data: Path, n: int) -> float:
    settings = fresh(bootstrap, data)
    codec = Codec()
    producer = Producer(producer_config(settings, "bench", linger_ms=20))
    topic = settings.topic("events")
    ts = 1_700_000_000_000
    seqs = {p: 0 for p in MIDS}
    trades = 0
    for i in range(n // 2):
        pair = ("BTCUSDT", "ETHUSDT", "SOLUSDT")[i % 3]
        ts += 50
        seqs[pair] += 1
        acc = Accepted(pair, seqs[pair], ts, 2 * i + 2, 2, 0, 0, 0, MIDS[pair], 5, 0)
        seqs[pair] += 1
        trades += 1
        trade = Trade(pair, seqs[pair], ts, trades, MIDS[pair] + i % 11, 5, 0, 2 * i + 1, 1,
                      2 * i + 2, 2, 1, 1)
        for ev in (acc, trade):
            while True:
                try:
                    producer.produce(topic, key=pair.encode(), value=codec.encode_event(ev),
                                     partition=MARKETS.markets[pair].partition)
                    break
                except BufferError:
                    producer.poll(0.05)
    assert producer.flush(60) == 0
    tickers = reader(settings, "tickers", fetch_wait_max_ms=5)   # as the replies reader
    proc = worker(settings, "marketdata", data / "marketdata.log")
    try:
        first, last = drain(tickers, trades, 600)
    finally:
        stop(proc)
        tickers.close()
    return 2 * trades / max(last - first, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bootstrap")
    # long enough that a batch's edge effects are small: a 20,000-request drain is four
    # 5,000-record batches, the first of them before the measured stretch
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--rate", type=int, default=2_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", choices=("accounts", "latency", "bare", "marketdata"),
                    help="run one phase (the others are left out of the JSON)")
    ap.add_argument("--bare", action="store_true",
                    help="also run the bare relay's latency phase (bare_latency_*)")
    ap.add_argument("--relay", nargs=3, metavar=("BOOTSTRAP", "PREFIX", "PARTITIONS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        run_relay(args.relay[0], args.relay[1], int(args.relay[2]))
        return 0
    wanted = {args.only} if args.only else {"accounts", "latency", "marketdata"}
    if args.bare:
        wanted.add("bare")
    broker = None
    with tempfile.TemporaryDirectory(prefix="keel-bench-streams-") as tmp:
        data = Path(tmp)
        bootstrap = args.bootstrap
        if bootstrap is None:
            from infra.embedded import free_port
            from infra.embedded.kafka import spawn
            from infra.health import HealthCheck

            port = free_port()
            broker = spawn(port, data / "kafka.log")
            bootstrap = f"127.0.0.1:{port}"
            while not HealthCheck("kafka", bootstrap).run(timeout=1.0).ok:
                time.sleep(0.1)
        result: dict = {}
        try:
            if "accounts" in wanted:
                rate, cpu_us, broker_us, steady = bench_accounts(bootstrap, data, args.requests,
                                                                 broker)
                result["accounts_msgs_per_s"] = round(rate)
                result["accounts_steady_msgs_per_s"] = round(steady)
                result["accounts_cpu_us_per_msg"] = round(cpu_us, 1)
                if broker_us is not None:
                    result["accounts_broker_cpu_us_per_msg"] = round(broker_us, 1)
                print(f"accounts: {result['accounts_msgs_per_s']} requests/s per worker, "
                      f"{result['accounts_cpu_us_per_msg']} us CPU per request", flush=True)
            if "latency" in wanted:
                result |= bench_latency(bootstrap, data, args.rate, args.seconds)
                print(f"latency at {args.rate}/s: p50 {result['added_latency_p50_ms']} ms, "
                      f"p99 {result['added_latency_p99_ms']} ms", flush=True)
            if "bare" in wanted:
                result |= bench_latency(bootstrap, data, args.rate, args.seconds, bare=True)
                print(f"bare relay at {args.rate}/s: p50 {result['bare_latency_p50_ms']} ms, "
                      f"p99 {result['bare_latency_p99_ms']} ms", flush=True)
            if "marketdata" in wanted:
                result["marketdata_msgs_per_s"] = round(bench_marketdata(bootstrap, data,
                                                                         args.events))
                print(f"marketdata: {result['marketdata_msgs_per_s']} events/s", flush=True)
        finally:
            if broker is not None:
                broker.send_signal(signal.SIGTERM)
                broker.wait(15)
    # wall figures depend on what else runs: the load average (1 min) at the end says so
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
