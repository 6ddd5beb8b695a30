"""Engine service benchmark on a real broker: exactly-once throughput, latency under a
fixed load, recovery and failover times.

    .venv/bin/python bench/engine_kafka.py [--json] [--bootstrap HOST:PORT]
                                           [--orders 300000] [--history 1000000]

Starts its own in-memory tansu broker unless --bootstrap is given; every phase uses
fresh topics (its own KEEL_TOPIC_PREFIX). Phases:
  orders_per_s  --orders standard-workload commands preloaded on one partition, then one
                engine (in this process, transactions on) drains them: records / time
                from its first to its last commit.
  p50_ms/p99_ms consume -> commit latency per order while a separate feeder process
                offers 10,000 orders/s for --latency-s seconds (weighted by records):
                from the poll that handed the engine the order to the end of
                commit_transaction of the transaction carrying its events (monotonic
                clock, engine thread). sent_p50_ms/sent_p99_ms: from the feeder handing
                the record to its producer (wall clock in a header) to that commit, so
                the trip to the broker, the broker's fetch wait and the wait behind the
                transaction in flight count too.
  recovery_s    --history orders in keel.orders, a snapshot at history-100k (written
                the way the engine writes it) and the group's offset at history: time
                from constructing the service to it being primary (snapshot load +
                100k replay + fencing + tail checks).
  bare_p50_ms/bare_p99_ms  (only with --only ...,bare) the latency phase without the
                engine: the same feeder and consumer settings, one transaction per batch
                with the same records copied to keel.events, a depth record and the
                offset, in the engine's order; the floor under p50_ms/p99_ms.
  failover_s    primary + standby processes (default 1 s takeover), kill -9 the primary
                under 5,000 orders/s: time from the kill to the first event the standby
                commits.
Every command carries a keel-source header as accounts writes them (the engine reads it
on non-Place commands). With --json the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):        # run as a script: import keel from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.markets import load_markets, parse_markets
from engine.service.tools import SENT_HEADER
from engine.workload import operations, to_commands
from infra.settings import Settings
from schemas.codec import Codec

REPO = Path(__file__).resolve().parent.parent
PAIR = "BTCUSDT"
MARKETS = {
    "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}},
    "markets": [{"pair": PAIR, "base": "BTC", "quote": "USDT", "tick_size": "0.01",
                 "lot_size": "0.001", "maker_fee": "0.001", "taker_fee": "0.002",
                 "partition": 0}],
}
MARKETS_TOML = """
[assets]
BTC = { decimals = 8 }
USDT = { decimals = 8 }
[[markets]]
pair = "BTCUSDT"
base = "BTC"
quote = "USDT"
tick_size = "0.01"
lot_size = "0.001"
maker_fee = "0.001"
taker_fee = "0.002"
partition = 0
"""


class Bench:
    def __init__(self, bootstrap: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.dir = workdir
        self.markets_file = workdir / "markets.toml"
        self.markets_file.write_text(MARKETS_TOML)
        self.markets = load_markets(self.markets_file)
        self.codec = Codec()

    def env(self, **extra: str) -> dict[str, str]:
        return {"KEEL_KAFKA_BOOTSTRAP": self.bootstrap,
                "KEEL_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}.",
                "KEEL_MARKETS_FILE": str(self.markets_file),
                "KEEL_DATA_DIR": str(self.dir / "keel"), "KEEL_LOG_LEVEL": "INFO", **extra}

    def settings(self, env: dict[str, str]) -> Settings:
        from engine.service.tools import ensure_engine_topics

        settings = Settings.from_env(env)
        ensure_engine_topics(settings, self.markets)
        return settings

    def service(self, settings: Settings):
        from engine.service.runner import EngineService

        service = EngineService(settings, self.markets, [0])
        thread = threading.Thread(target=service.run, daemon=True)
        return service, thread

    # ---- phases ----

    def throughput(self, n: int) -> dict:
        from engine.service.tools import produce_commands

        settings = self.settings(self.env(KEEL_ENGINE_SNAPSHOT_EVERY=str(10 * n)))
        produce_commands(settings, self.codec, 0, to_commands(operations(n, seed=1), PAIR),
                         source=0)
        service, thread = self.service(settings)
        thread.start()
        worker = _wait(lambda: service.workers.get(0), 60)
        marks = []       # (wall, engine thread CPU, offset) at each commit, from its thread
        worker.on_commit = lambda latency, batch: marks.append(
            (time.perf_counter(), time.thread_time(), worker.next_offset))
        _wait(lambda: worker.next_offset >= n, 600, every=0.005)
        service.stop()
        thread.join(30)
        (w0, c0, o0), (w1, c1, o1) = marks[0], marks[-1]
        return {"orders_per_s": round((o1 - o0) / (w1 - w0)),
                # What the engine thread does per second of CPU it actually got: the
                # figure that does not depend on what else shares the machine.
                "orders_per_engine_cpu_s": round((o1 - o0) / (c1 - c0)),
                "throughput_orders": n, "throughput_batches": len(marks)}

    def latency(self, seconds: float, rate: int = 10_000) -> dict:
        from engine.service.tools import read_partition

        env = self.env()
        settings = self.settings(env)
        service, thread = self.service(settings)
        thread.start()
        worker = _wait(lambda: service.workers.get(0), 60)
        _wait(lambda: worker.live_at, 60)
        samples: list[tuple[float, int]] = []
        committed: list[tuple[int, int, int]] = []  # (wall clock ns at commit, first, last offset)

        def on_commit(latency: float, batch: list) -> None:
            # Runs on the engine thread between transactions: the send stamps are read
            # from keel.orders after the run, not here, so the bench adds no per-record
            # work to the engine. Nor does it keep the batch: 100k Message objects held
            # for the run made the engine's full collections walk them (gen-2 pauses of
            # 30-110 ms inside transactions, counted as engine latency).
            samples.append((latency, len(batch)))
            committed.append((time.time_ns(), batch[0][0].offset(), batch[-1][0].offset()))
        worker.on_commit = on_commit
        feeder = subprocess.run(
            [sys.executable, __file__, "--feed", str(int(seconds * rate)), str(rate)],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds * 5 + 60)
        if feeder.returncode != 0:
            raise RuntimeError(f"feeder failed: {feeder.stderr[-2000:]}")
        _wait(lambda: worker.next_offset >= int(seconds * rate), 120)
        service.stop()
        thread.join(30)
        total = sum(n for _, n in samples)
        # Per record: the feeder's send -> the commit of its transaction.
        stamps = {msg.offset(): int(value) for msg in read_partition(settings, settings.topic(
            "orders"), 0) for key, value in msg.headers() or () if key == SENT_HEADER}
        sent = sorted((now - stamps[offset]) / 1e9 for now, first, last in committed
                      for offset in range(first, last + 1) if offset in stamps)
        return {"p50_ms": round(_quantile(samples, 0.50) * 1000, 3),
                "p99_ms": round(_quantile(samples, 0.99) * 1000, 3),
                # Stricter: from the feeder handing the record to its producer, so the
                # trip to the broker, the fetch and the wait behind the transaction in
                # flight count too.
                "sent_p50_ms": round(sent[len(sent) // 2] * 1000, 3),
                "sent_p99_ms": round(sent[int(len(sent) * 0.99)] * 1000, 3),
                "latency_orders": total, "latency_batches": len(samples),
                "offered_per_s": rate}

    def bare(self, seconds: float, rate: int = 10_000) -> dict:
        """The latency phase's broker work without the engine: the same feeder, a consumer
        configured as the engine's, and per batch one transaction holding a record per
        input record on keel.events (its value copied), one on keel.depth and the input
        offset, produced and sent in the engine's order; no matching. Same quantiles
        (consume -> commit, weighted by records): the floor the engine's p50/p99 sit on."""
        from confluent_kafka import Consumer, Producer, TopicPartition

        from infra.kafka import consumer_config, producer_config

        env = self.env()
        settings = self.settings(env)
        orders, events, depth = (settings.topic(t) for t in ("orders", "events", "depth"))
        consumer = Consumer(consumer_config(
            settings, f"bare-{uuid.uuid4().hex[:6]}", "bench-bare", fetch_wait_max_ms=5,
            fetch_min_bytes=1, queued_max_messages_kbytes=65_536))
        consumer.assign([TopicPartition(orders, 0, 0)])
        producer = Producer(producer_config(settings, "bench-bare", linger_ms=0,
                                            transactional_id=f"bench-bare-{uuid.uuid4().hex}"))
        producer.init_transactions(30)
        metadata = consumer.consumer_group_metadata()
        feeder = subprocess.Popen([sys.executable, __file__, "--feed", str(int(seconds * rate)),
                                   str(rate)], env={**os.environ, **env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: list[tuple[float, int]] = []
        done = 0
        try:
            deadline = time.monotonic() + seconds * 5 + 60
            while done < int(seconds * rate) and time.monotonic() < deadline:
                first = consumer.poll(0.02)
                if first is None:
                    continue
                received = time.monotonic()
                msgs = [m for m in [first] + consumer.consume(4999, 0) if m.error() is None]
                if not msgs:
                    continue
                producer.begin_transaction()
                producer.produce(events, msgs[0].value(), partition=0)
                producer.produce(depth, b"d" * 64, partition=0)
                producer.send_offsets_to_transaction(
                    [TopicPartition(orders, 0, msgs[-1].offset() + 1)], metadata, 10)
                for m in msgs[1:]:
                    producer.produce(events, m.value(), partition=0)
                producer.commit_transaction(10)
                samples.append((time.monotonic() - received, len(msgs)))
                done += len(msgs)
        finally:
            feeder.kill()
            feeder.wait(10)
            consumer.close()
        return {"bare_p50_ms": round(_quantile(samples, 0.50) * 1000, 3),
                "bare_p99_ms": round(_quantile(samples, 0.99) * 1000, 3),
                "bare_orders": done, "bare_batches": len(samples)}

    def recovery(self, history: int, replay: int = 100_000) -> dict:
        from confluent_kafka import Consumer, Producer, TopicPartition

        from engine.engine import Engine
        from engine.service.config import group_id
        from engine.service.snapshots import chunk_records
        from engine.service.tools import produce_commands
        from infra.kafka import consumer_config, producer_config

        settings = self.settings(self.env())
        commands = list(to_commands(operations(history, seed=2), PAIR))
        produce_commands(settings, self.codec, 0, commands, source=0)
        cut = history - replay
        engine = Engine(parse_markets(MARKETS).pairs_on(0))
        engine.apply_many(commands[:cut])
        data = engine.snapshot()
        producer = Producer(producer_config(settings, "bench-snapshot"))
        for key, value, headers in chunk_records(self.codec, 0, cut, data, engine.state_hash(),
                                                 commands[cut - 1].ts, 512 * 1024):
            producer.produce(settings.topic("engine.snapshots"), value, key, partition=0,
                             headers=headers)
        producer.flush(30)
        committer = Consumer(consumer_config(settings, group_id(settings.topic_prefix),
                                             "bench-committer"))
        committer.commit(offsets=[TopicPartition(settings.topic("orders"), 0, history)],
                         asynchronous=False)
        committer.close()
        del commands
        started = time.perf_counter()
        service, thread = self.service(settings)
        thread.start()
        worker = _wait(lambda: service.workers.get(0), 60, every=0.001)
        _wait(lambda: worker.live_at, 120, every=0.001)
        recovery = time.perf_counter() - started
        ok = worker.next_offset == history and worker.engine.state_hash() == _hash_after(
            history, seed=2)
        service.stop()
        thread.join(30)
        return {"recovery_s": round(recovery, 3), "recovery_history": history,
                "recovery_replayed": replay, "snapshot_bytes": len(data),
                "resting_orders": len(engine.book(PAIR)), "recovery_state_ok": ok}

    def failover(self, rate: int = 5_000) -> dict:
        env = self.env()
        settings = self.settings(env)
        feeder = subprocess.Popen([sys.executable, __file__, "--feed", str(rate * 8), str(rate)],
                                  env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        logs = [self.dir / f"failover-{i}.log" for i in range(2)]
        procs = []
        try:
            for i, extra in enumerate(((), ("--standby",))):
                with open(logs[i], "wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "infra.cli", "engine", "--partitions", "0",
                         "--metrics-port", "0", *extra],
                        cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT))
                word = "partition is primary" if i == 0 else "starting as standby"
                _wait(lambda i=i, w=word: w in logs[i].read_text(errors="replace"), 60)
            time.sleep(2.0)
            killed_at = time.time()
            procs[0].send_signal(signal.SIGKILL)
            _wait(lambda: "partition is primary" in logs[1].read_text(errors="replace"), 60)
            live_at = _logged_at(logs[1].read_text(errors="replace"), "partition is primary")
            feeder.wait(120)
            first = _wait(lambda: _first_event_after(settings, live_at), 30)
            return {"failover_s": round(first - killed_at, 3),
                    "failover_live_s": round(live_at - killed_at, 3)}
        finally:
            for proc in (*procs, feeder):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


def _hash_after(n: int, seed: int) -> str:
    from engine.engine import Engine

    engine = Engine(parse_markets(MARKETS).pairs_on(0))
    engine.apply_many(to_commands(operations(n, seed=seed), PAIR))
    return engine.state_hash()


def _first_event_after(settings: Settings, wall: float) -> float | None:
    from engine.service.tools import read_partition

    stamps = [m.timestamp()[1] / 1000 for m in read_partition(settings, settings.topic("events"), 0)]
    later = [t for t in stamps if t >= wall]
    return min(later) if later else None


def _logged_at(log: str, msg: str) -> float:
    import calendar

    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == msg:
            stamp = json.loads(line)["ts"]
            return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                stamp[19:-1] or 0)
    raise RuntimeError(f"{msg!r} not logged")


def _quantile(samples: list[tuple[float, int]], q: float) -> float:
    ordered = sorted(samples)
    total = sum(n for _, n in ordered)
    running = 0
    for value, n in ordered:
        running += n
        if running >= q * total:
            return value
    return ordered[-1][0] if ordered else float("nan")


def _wait(predicate, timeout: float, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark phase timed out")
        time.sleep(every)


def _feed(n: int, rate: int) -> int:
    """Child mode: offer n commands at `rate`/s to partition 0 of KEEL_TOPIC_PREFIX."""
    from engine.service.tools import produce_commands

    settings = Settings.from_env()
    # keel-source headers as accounts writes them (the engine reads them on non-Places),
    # and the send time, for the latency phase's stricter figure.
    produce_commands(settings, Codec(), 0, to_commands(operations(n, seed=3), PAIR), rate,
                     source=0, stamp=True)
    return 0


def _broker(workdir: Path):
    from infra.embedded import free_port
    from infra.embedded.kafka import spawn
    from infra.health import HealthCheck

    port = free_port()
    proc = spawn(port, workdir / "kafka.log")
    bootstrap = f"127.0.0.1:{port}"
    _wait(lambda: HealthCheck("kafka", bootstrap).run(timeout=1.0).ok, 60, every=0.1)
    return proc, bootstrap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--latency-s", type=float, default=10.0)
    parser.add_argument("--only", default="throughput,latency,recovery,failover",
                        help="comma-separated phases to run (also: bare, the latency "
                             "phase's transactions without the engine)")
    parser.add_argument("--feed", nargs=2, type=int, metavar=("N", "RATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        return _feed(*args.feed)

    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        workdir = Path(tmp)
        broker = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker, bootstrap = _broker(workdir)
        try:
            bench = Bench(bootstrap, workdir)
            result: dict = {}
            only = set(args.only.split(","))
            if "throughput" in only:
                result |= bench.throughput(args.orders)
                print(f"throughput: {result['orders_per_s']:,} orders/s through one partition "
                      f"(exactly-once), {args.orders:,} orders; "
                      f"{result['orders_per_engine_cpu_s']:,} per CPU-second of the engine "
                      "thread", flush=True)
            if "latency" in only:
                result |= bench.latency(args.latency_s)
                print(f"latency at {result['offered_per_s']:,}/s: p50 {result['p50_ms']} ms, "
                      f"p99 {result['p99_ms']} ms (consume -> commit); from the feeder's send: "
                      f"p50 {result['sent_p50_ms']} ms, p99 {result['sent_p99_ms']} ms",
                      flush=True)
            if "bare" in only:
                result |= bench.bare(args.latency_s)
                print(f"bare transactions at 10,000/s (the latency phase's broker work, no "
                      f"matching): p50 {result['bare_p50_ms']} ms, p99 {result['bare_p99_ms']} "
                      "ms (consume -> commit)", flush=True)
            if "recovery" in only:
                result |= bench.recovery(args.history)
                print(f"recovery: {result['recovery_s']} s (snapshot of "
                      f"{result['resting_orders']:,} resting orders, "
                      f"{result['snapshot_bytes']:,} B, + {result['recovery_replayed']:,} "
                      f"replayed of {args.history:,}); state ok: {result['recovery_state_ok']}",
                      flush=True)
            if "failover" in only:
                result |= bench.failover()
                print(f"failover: first new event {result['failover_s']} s after kill -9 "
                      f"(standby primary after {result['failover_live_s']} s)", flush=True)
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    result["cpus"] = os.cpu_count()
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)     # other work sharing the box
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
