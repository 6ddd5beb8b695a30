"""`keel sink clickhouse` on embedded chDB with the real broker: depth, trades and candles
exactly once (SIGKILL included), candles equal to those of the PostgreSQL trades, and
`keel sql` reading (never writing) while the sink runs."""
from __future__ import annotations

import itertools
import json
import random
import signal
import time
import urllib.request
from datetime import UTC, datetime

import psycopg

from engine.domain import Trade
from infra.embedded import free_port
from schemas.codec import Codec
from tests.sinks.feed import (
    PAIRS,
    candles,
    caught_up,
    depth_updates,
    engine_events,
    keel,
    produce,
    sink_process,
    stop,
    wait_for,
)

PARTITION = {pair: i for i, pair in enumerate(PAIRS)}
INTERVALS = {"1m": 60, "1h": 3600, "1d": 86400}


def _produce_all(bootstrap, prefix, events, depth) -> tuple[dict, dict]:
    codec = Codec()
    ends_e = produce(bootstrap, prefix + "events",
                     [(e.pair, codec.encode_event(e)) for e in events], PARTITION)
    ends_d = produce(bootstrap, prefix + "depth",
                     [(d["pair"], codec.encode("depth_update", d)) for d in depth], PARTITION)
    return ends_e, ends_d


def _ch_env(kafka_bootstrap, prefix, tmp_path) -> dict[str, str]:
    return {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_TOPIC_PREFIX": prefix,
            "KEEL_LOG_LEVEL": "INFO", "KEEL_DATA_DIR": str(tmp_path / "keel"),
            "KEEL_EMBEDDED_CLICKHOUSE_PORT": str(free_port()),
            # A SIGKILLed sink's partitions come back after the session: keep it short.
            "KEEL_KAFKA_SESSION_TIMEOUT_MS": "3000"}


def _sql(env, query: str) -> list[dict]:
    done = keel(["sql", query, "--format", "json"], env)
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


def _counts(env) -> tuple[int, int] | None:
    done = keel(["sql", "SELECT (SELECT count() FROM trades) AS t, "
                        "(SELECT count() FROM depth) AS d", "--format", "json"], env)
    if done.returncode != 0:
        return None
    row = json.loads(done.stdout)
    return int(row["t"]), int(row["d"])


def _ch_candles(env, interval: str) -> dict[tuple[str, int], tuple]:
    rows = _sql(env, f"SELECT pair, toUnixTimestamp(bucket) AS b, open, high, low, close, "
                     f"volume, toString(quote_volume) AS qv, trades "
                     f"FROM candles_{interval}_final ORDER BY pair, b")
    return {(r["pair"], int(r["b"])): (int(r["open"]), int(r["high"]), int(r["low"]),
                                        int(r["close"]), int(r["volume"]), int(r["qv"]),
                                        int(r["trades"])) for r in rows}


def _pg_candles(dsn: str, seconds: int) -> dict[tuple[str, int], tuple]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT pair, ts / 1000 / %(s)s * %(s)s AS b,"
            " (array_agg(price ORDER BY trade_id))[1], max(price), min(price),"
            " (array_agg(price ORDER BY trade_id DESC))[1], sum(qty), sum(price * qty), count(*)"
            " FROM trades GROUP BY 1, 2", {"s": seconds}).fetchall()
    return {(r[0], int(r[1])): tuple(int(v) for v in r[2:]) for r in rows}


def test_depth_trades_and_candles_once_equal_to_postgres_and_sql_reads_only(
        kafka_bootstrap, prefix, sink_db, tmp_path):
    # Trades span an hour boundary and more, so 1m and 1h candles have several buckets.
    t0 = int(datetime.now(UTC).replace(minute=50, second=0, microsecond=0).timestamp() * 1000
             ) - 86_400_000
    events = engine_events(4000, t0_ms=t0)
    depth = depth_updates(3000)
    trades = [e for e in events if type(e) is Trade]
    ends_e, ends_d = _produce_all(kafka_bootstrap, prefix, events, depth)
    env = _ch_env(kafka_bootstrap, prefix, tmp_path)
    pg_env = {"KEEL_KAFKA_BOOTSTRAP": kafka_bootstrap, "KEEL_POSTGRES_URL": sink_db,
              "KEEL_TOPIC_PREFIX": prefix}
    group = prefix.rstrip(".") + "-sink-clickhouse"
    ch = sink_process("clickhouse", env, tmp_path / "ch.log")
    pg = sink_process("postgres", pg_env, tmp_path / "pg.log")
    try:
        wait_for(lambda: _counts(env) == (len(trades), len(depth)), what="ClickHouse rows")
        # Everything again, as a replayed topic would deliver it: nothing changes.
        ends_e, ends_d = _produce_all(kafka_bootstrap, prefix, events, depth)
        wait_for(caught_up(kafka_bootstrap, group, prefix + "events", ends_e), what="events x2")
        wait_for(caught_up(kafka_bootstrap, group, prefix + "depth", ends_d), what="depth x2")
        wait_for(caught_up(kafka_bootstrap, prefix.rstrip(".") + "-sink-postgres",
                           prefix + "events", ends_e), what="the postgres sink")
        assert _counts(env) == (len(trades), len(depth))
        levels = _sql(env, "SELECT sum(length(bid_prices) + length(ask_prices)) AS n FROM depth")
        assert int(levels[0]["n"]) == sum(len(d["bids"]) + len(d["asks"]) for d in depth)
        for name, seconds in INTERVALS.items():
            got = _ch_candles(env, name)
            assert got == candles(trades, seconds)
            assert got == _pg_candles(sink_db, seconds)
        assert len(_ch_candles(env, "1m")) > 1 and len(_ch_candles(env, "1h")) > 1

        # keel sql reads while the sink runs, and never writes.
        table = keel(["sql", "SELECT pair, count() AS n FROM trades GROUP BY pair ORDER BY pair"],
                     env)
        assert table.returncode == 0 and b"BTCUSDT" in table.stdout
        csv = keel(["sql", "SELECT pair FROM trades ORDER BY pair LIMIT 1", "--format", "csv"],
                   env)
        assert csv.stdout.decode().splitlines() == ['"pair"', '"BTCUSDT"']
        for write in ("INSERT INTO trades (pair) VALUES ('X')", "DROP TABLE trades",
                      "ALTER TABLE trades DELETE WHERE 1", "SELECT 1; DROP TABLE trades",
                      "SELECT count() FROM trades INTO OUTFILE '/tmp/x.csv'"):
            refused = keel(["sql", write], env)
            assert refused.returncode == 2, write
            assert b"read-only" in refused.stderr or b"one statement" in refused.stderr
        # Past the statement check, ClickHouse itself refuses on the read-only handle.
        sneaky = keel(["sql", "SELECT 1 SETTINGS readonly = 0"], env)
        assert sneaky.returncode != 0
        assert _counts(env) == (len(trades), len(depth))
    finally:
        assert stop(pg) == 0
        assert stop(ch) == 0


def _owner_counts(port: int) -> tuple[int, int] | None:
    """(trades, depth rows) straight from the owner's read-only endpoint: cheap enough to
    poll every few ms (keel sql starts a Python each time). None while it is not up."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query?readonly=1&format=JSONEachRow",
        data=b"SELECT (SELECT count() FROM trades) AS t, (SELECT count() FROM depth) AS d",
        method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            row = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return int(row["t"]), int(row["d"])


def test_sigkill_repeatedly_loses_and_doubles_nothing_views_included(
        kafka_bootstrap, prefix, tmp_path):
    events = engine_events(265_000, seed=11)
    trades = [e for e in events if type(e) is Trade]
    assert len(trades) >= 100_000
    depth = depth_updates(50_000)
    _produce_all(kafka_bootstrap, prefix, events, depth)
    env = _ch_env(kafka_bootstrap, prefix, tmp_path)
    port = int(env["KEEL_EMBEDDED_CLICKHOUSE_PORT"])
    want = (len(trades), len(depth))
    total = sum(want)
    rng = random.Random(9)
    # A sink killed while chDB reads a depth block file leaves the file: the next owner
    # of the data dir removes it at start (this one planted as if by an earlier run).
    blocks = tmp_path / "keel" / "clickhouse-blocks"
    blocks.mkdir(parents=True)
    (blocks / "depth-left-by-a-kill.native").write_bytes(b"\0" * 1024)
    kills, progress, at_kill = 0, [], []
    # Batches of 10k records, not the default 50k: ~150k rows were then three or four
    # inserts, and the one crossing 6/8 could be the last (ci27, and again 21:38 UTC:
    # 'assert 152372 < 152372'); now a kill at a share leaves inserts to come.
    batch = ("--batch", "10000")
    proc = sink_process("clickhouse", env, tmp_path / "ch.log", *batch)
    try:
        # Kill at fixed shares of the rows, so every kill lands mid-load however fast the
        # sink is (a random delay let a faster sink finish first, or killed it while it
        # was still joining the group); right after an insert the next is usually on.
        for share in range(1, 7):
            wait_for(lambda m=total * share // 8: sum(_owner_counts(port) or (0,)) >= m,
                     timeout=300, every=0.02, what=f"{share}/8 of the rows")
            time.sleep(rng.uniform(0, 0.05))
            at_kill.append(_owner_counts(port))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
            proc = sink_process("clickhouse", env, tmp_path / "ch.log", *batch)
            progress.append(wait_for(lambda: _owner_counts(port), timeout=120, every=0.1,
                                     what="the owner"))
        wait_for(lambda: _owner_counts(port) == want, timeout=600, what="every row")
        # No duplicate even before merges (count without FINAL), and views exact.
        assert _sql(env, "SELECT count() AS n, uniqExact(pair, trade_id) AS u FROM trades") == [
            {"n": len(trades), "u": len(trades)}]
        for name, seconds in INTERVALS.items():
            assert _ch_candles(env, name) == candles(trades, seconds)
    finally:
        assert stop(proc) == 0
    assert kills == 6
    assert sorted(blocks.glob("depth-*.native")) == []
    # Each kill landed mid-load: progress only grows and the last kill was short of the
    # end (counted right before the signal: a restarted sink may load the rest before its
    # owner first answers, since it fetches 16 MB a partition, 839d11b).
    assert all(a <= b for x, y in itertools.pairwise(progress) for a, b in zip(x, y, strict=True))
    assert sum(at_kill[-1]) < total


def test_bad_depth_records_go_to_the_dlq_and_the_rest_loads(kafka_bootstrap, prefix, tmp_path):
    from confluent_kafka import Consumer

    from sinks.depth_native import current_header

    codec = Codec()
    depth = depth_updates(201)
    good = [(d["pair"], codec.encode("depth_update", d)) for d in depth]
    late = good.pop()                  # a newer update of its pair: not a replay
    depth.pop()
    # One that fails the codec at once, one whose header is right but whose body is cut
    # short (the walk refuses it: its partition goes through the codec).
    bad = [("BTCUSDT", b"\x00\x01garbage"), (late[0], current_header() + late[1][10:40])]
    produce(kafka_bootstrap, prefix + "depth", good + bad, PARTITION)
    env = _ch_env(kafka_bootstrap, prefix, tmp_path)
    proc = sink_process("clickhouse", env, tmp_path / "ch.log")
    try:
        wait_for(lambda: _counts(env) == (0, len(depth)), what="the good depth rows")
    finally:
        assert stop(proc) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{prefix}dlq",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([prefix + "dlq"])
    letters = []
    try:
        def read():
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                letters.append(codec.decode("dead_letter", m.value()))
            return len(letters) >= 2
        wait_for(read, timeout=60, every=0)
    finally:
        consumer.close()
    assert sorted(d["value"] for d in letters) == sorted(v for _, v in bad)
    assert {d["source_topic"] for d in letters} == {prefix + "depth"}
