"""Where an order's time goes at a low, fixed rate: latency per hop of the order path.

Drives a running stack with `keel loadgen baseline` at `--rate` orders/s (the real gateway,
HTTP and WebSocket) while two group-less consumers tail the path from its end, and joins
each order's records across the topics:

  gateway     request received (its `ts`) -> keel.requests record written (CreateTime)
  accounts    keel.requests written -> keel.orders Place written (same request_id)
  engine      keel.orders written -> its Accepted/Rejected written (same order_id)
  commit      keel.events written -> a read_committed reader sees it (the transaction's
              commit, then that reader's fetch)
  settlement  a Trade written -> its first keel.settlements record written (pair, seq)
  reply       keel.requests written -> keel.replies record written (request_id)
  pushed      a Trade written -> the gateway's public `<pair>@trade` WebSocket message
              for it reaches a client here (pair, trade id): the transaction's commit,
              then the gateway's fetch, fold and fan-out (a user's fill takes that path
              too); minus `commit`, the gateway's own share. (Measured from the write, not
              from this process's read_committed reader, which lags the gateway's own.)
  deliver/T   a record written -> a read_uncommitted reader sees it, per topic T: the
              broker's share of every hop (produce + a consumer's fetch)
  committed   request received -> the order's event visible read_committed (the sum)

and, from the load generator's own report, the client's order->fill (HTTP send to the
fill on its WebSocket), whose excess over `committed` is the gateway's feed and push.

The tailing consumers wait at most 1 ms per fetch, so they add little of their own; their
`deliver` figures are the floor any consumer sees. Timestamps are the producers' clocks
and this process's (one machine), in ms.

    python bench/hops.py --rate 50 --seconds 20 [--json]      # against `keel up`'s stack
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from infra.settings import Settings
from schemas.codec import Codec, CodecError

TOPICS = ("requests", "orders", "events", "settlements", "replies")

class TradeStream:
    """The gateway's public trade streams of every pair, on a thread: (pair, trade id,
    seen ms) per message."""

    def __init__(self, url: str, pairs: list[str]) -> None:
        self.url = url.rstrip("/") + "/ws/" + "/".join(f"{p.lower()}@trade" for p in pairs)
        self.seen: list[tuple[str, int, float]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trade-stream")

    def start(self) -> None:
        self._thread.start()
        self.ready.wait(20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import asyncio

        import aiohttp

        async def main() -> None:
            async with aiohttp.ClientSession() as http, http.ws_connect(self.url) as ws:
                self.ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return
                        continue
                    now = time.time() * 1000
                    data = json.loads(msg.data)
                    data = data.get("data", data)
                    if data.get("e") == "trade":
                        self.seen.append((data["s"], data["t"], now))
        try:
            asyncio.run(main())
        except Exception as exc:  # noqa: BLE001 - the other hops still count
            print(f"trade stream: {exc}", file=sys.stderr)
        finally:
            self.ready.set()


class Tail:
    """One group-less consumer from the end of `topics`; keeps (record, seen_ms)."""

    def __init__(self, settings: Settings, topics: list[str], isolation: str) -> None:
        self.settings, self.topics, self.isolation = settings, topics, isolation
        self.seen: list[tuple[str, bytes, int, float]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"tail-{isolation}")

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(20):
            raise RuntimeError("tail consumer did not start")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = Consumer({
            "bootstrap.servers": self.settings.bootstrap, "group.id": f"keel-hops-{os.getpid()}",
            "enable.auto.commit": False, "isolation.level": self.isolation,
            "fetch.wait.max.ms": 1, "fetch.queue.backoff.ms": 1, "log_level": 0})
        try:
            meta = consumer.list_topics(timeout=10)
            consumer.assign([TopicPartition(t, p, OFFSET_END) for t in self.topics
                             for p in meta.topics[t].partitions])
            # Wait for the assignment to have positions (first fetches done).
            end = time.monotonic() + 5
            while time.monotonic() < end:
                consumer.poll(0.05)
                if all(tp.offset >= 0 for tp in consumer.position(consumer.assignment())):
                    break
            self.ready.set()
            while not self._stop.is_set():
                # consume(n, timeout) waits out its timeout unless n arrive; poll returns
                # at the first record
                first = consumer.poll(0.05)
                if first is None:
                    continue
                now = time.time() * 1000
                for msg in [first, *consumer.consume(1000, 0)]:
                    if msg.error() is None and msg.value() is not None:
                        self.seen.append((msg.topic(), msg.value(), msg.timestamp()[1], now))
        finally:
            self.ready.set()
            consumer.close()


def _pct(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    v = sorted(values)
    pick = lambda q: round(v[min(len(v) - 1, int(q * len(v)))], 1)   # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "n": len(v)}


def join(codec: Codec, settings: Settings, uncommitted: list, committed: list,
         pushed: list | None = None) -> dict:
    """Per-hop latencies (ms) for the orders seen on every topic of their path."""
    name = {settings.topic(t): t for t in TOPICS}
    req: dict[str, tuple[int, int]] = {}          # request_id -> (gateway ts, written)
    order: dict[str, tuple[int, int]] = {}        # request_id -> (order_id, written)
    answered: dict[int, int] = {}                 # order_id -> its event's written
    trades: dict[tuple[str, int], int] = {}       # (pair, seq) -> written
    trade_written: dict[tuple[str, int], int] = {}   # (pair, trade id) -> written
    settled: dict[tuple[str, int], int] = {}      # (pair, seq) -> first settlement written
    replied: dict[str, int] = {}
    visible: dict[bytes, float] = {v: seen for _t, v, _w, seen in committed}
    event_of: dict[int, bytes] = {}
    out: dict[str, list[float]] = defaultdict(list)
    for topic, value, written, seen in uncommitted:
        t = name[topic]
        out[f"deliver/{t}"].append(seen - written)
        try:
            kind, rec = codec.decode_any(value)
        except CodecError:
            continue
        if t == "requests":
            req[rec["request_id"]] = (rec["ts"], written)
        elif t == "orders" and rec["command"][0] == "keel.Place" and rec["request_id"]:
            order[rec["request_id"]] = (rec["command"][1]["order_id"], written)
        elif t == "events":
            ev_kind, body = rec["event"]
            if ev_kind in ("keel.Accepted", "keel.Rejected") and "order_id" in body:
                answered.setdefault(body["order_id"], written)
                event_of.setdefault(body["order_id"], value)
            elif ev_kind == "keel.Trade":
                trades[(rec["pair"], rec["seq"])] = written
                trade_written[(rec["pair"], body["trade_id"])] = written
        elif t == "settlements":
            settled.setdefault((rec["pair"], rec["seq"]), written)
        elif t == "replies":
            replied.setdefault(rec["request_id"], written)
    for rid, (gw_ts, w_req) in req.items():
        out["gateway"].append(w_req - gw_ts)
        if rid in replied:
            out["reply"].append(replied[rid] - w_req)
        if rid not in order:
            continue
        oid, w_ord = order[rid]
        out["accounts"].append(w_ord - w_req)
        if oid not in answered:
            continue
        w_ev = answered[oid]
        out["engine"].append(w_ev - w_ord)
        seen_c = visible.get(event_of[oid])
        if seen_c is not None:
            out["commit"].append(seen_c - w_ev)
            out["committed"].append(seen_c - gw_ts)
    for key, w_trade in trades.items():
        if key in settled:
            out["settlement"].append(settled[key] - w_trade)
    for pair, trade_id, seen in pushed or ():
        written = trade_written.get((pair, trade_id))
        if written is not None:
            out["pushed"].append(seen - written)
    return {hop: _pct(v) for hop, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50.0, help="orders/s (the loadgen's --rate)")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--users", type=int, default=40)
    ap.add_argument("--no-load", action="store_true",
                    help="only tail for --seconds (someone else drives the stack)")
    ap.add_argument("--json", action="store_true", help="last line: the result as JSON")
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    codec = Codec.from_settings(settings)
    tails = [Tail(settings, [settings.topic(t) for t in TOPICS], "read_uncommitted"),
             Tail(settings, [settings.topic("events")], "read_committed")]
    for tail in tails:
        tail.start()
    from engine.markets import load_markets

    stream = TradeStream(f"http://{settings.gateway_host}:{settings.gateway_port}",
                         sorted(load_markets(settings.markets_file).markets))
    stream.start()
    load = None
    t0 = time.process_time()
    try:
        if args.no_load:
            time.sleep(args.seconds)
        else:
            proc = subprocess.run(
                [sys.executable, "-m", "infra.cli", "loadgen", "baseline", "--rate", str(args.rate),
                 "--seconds", str(args.seconds), "--users", str(args.users), "--json",
                 "--no-progress"], capture_output=True, text=True, check=False)
            lines = proc.stdout.strip().splitlines()
            try:
                load = json.loads(lines[-1])        # exit 1 (errors seen) still reports
            except (IndexError, ValueError):
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return 1
        time.sleep(2.0)                 # the last orders' events and settlements
    finally:
        for tail in tails:
            tail.stop()
        stream.stop()
    hops = join(codec, settings, tails[0].seen, tails[1].seen, stream.seen)
    result = {"rate": args.rate, "seconds": args.seconds, "hops_ms": hops,
              "load_avg_1m": os.getloadavg()[0], "tail_cpu_s": round(time.process_time() - t0, 2)}
    if load is not None:
        result["client"] = {"orders_per_s": load.get("orders_per_s"),
                            "ack_ms": load.get("ack_ms"), "fill_ms": load.get("fill_ms"),
                            "errors": load.get("requests", {}).get("error")}
    width = max(len(h) for h in hops)
    for hop, p in hops.items():
        print(f"{hop:<{width}}  p50 {p['p50']!s:>8} ms  p99 {p['p99']!s:>8} ms  n {p['n']}")
    if load is not None:
        c = result["client"]
        print(f"client: {c['orders_per_s']} orders/s, ack {c['ack_ms']}, fill {c['fill_ms']}")
    print(f"load avg {result['load_avg_1m']:.2f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
