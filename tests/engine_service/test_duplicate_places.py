"""A command delivered twice on keel.orders without a keel-source header, on the real broker.

A Place copy (same bytes, or an id not above the last one of its accounts partition) is
dropped: no event, no seq, its offset committed, counted. Without the header, Cancel,
Amend and CancelAll have no rising number, so a copy of one reaches the book again; the
first test pins what that does (two of the cases are NOT harmless: accounts puts the
header on every record for that reason, test_keel_source.py covers it).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

from engine.domain import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    CancelAll,
    Cancelled,
    OrderKind,
    Place,
    Reason,
    Rejected,
    ResultCode,
    Side,
    TimeInForce,
    Trade,
)
from engine.engine import Engine
from engine.service.config import group_id
from engine.service.duplicates import ORDER_ID_STRIDE, DuplicateFilter
from engine.service.snapshots import STATE_MAGIC, chunk_records, unpack_state
from engine.service.tools import clean_run, produce_values
from engine.workload import operations, to_commands
from infra.embedded import free_port
from infra.kafka import consumer_config, producer_config

from .checks import (
    assert_depth_chain,
    assert_seq_contiguous,
    committed_orders,
    last_snapshot,
    logged,
    metric_value,
    published_events,
    scrape,
)
from .conftest import REPO, log_of, wait_for

BTC = "BTCUSDT"


def _oid(n: int, accounts_partition: int) -> int:
    return n * ORDER_ID_STRIDE + accounts_partition


def _limit(n: int, residue: int, user: int, side: Side, price: int, qty: int, ts: int) -> Place:
    return Place(BTC, _oid(n, residue), user, side, OrderKind.LIMIT, TimeInForce.GTC, price,
                 qty, 0, 0, ts)


def _produce(env, commands) -> None:
    """Each distinct command encoded once: a copy is the very same bytes."""
    blobs: dict = {}
    produce_values(env.settings, env.settings.topic("orders"), 0,
                   ((c.pair.encode(), blobs.setdefault(c, env.codec.encode_command(c)))
                    for c in commands))


def _committed(env) -> int:
    return committed_orders(env)


def _logged(proc, msg: str) -> list[dict]:
    return logged(log_of(proc), msg)


def _logged_drops(proc) -> int:
    return sum(rec["count"] for rec in _logged(proc, "dropped duplicate commands"))


def test_copies_of_commands_on_one_partition(engine_env, spawn_engine):
    env = engine_env
    p1 = _limit(1, 3, 1, Side.SELL, 100, 5, 1)
    p2 = _limit(2, 3, 2, Side.BUY, 100, 5, 2)          # takes p1 whole
    p3 = _limit(5, 7, 3, Side.BUY, 99, 4, 3)           # rests
    p4_older = _limit(4, 7, 4, Side.SELL, 99, 4, 4)    # residue 7 already saw n=5
    p5 = _limit(1, 8, 5, Side.SELL, 101, 2, 5)         # lower n, other residue: executes
    cancel5 = Cancel(BTC, p5.order_id, 5, 6)
    amend3 = Amend(BTC, p3.order_id, 3, 98, 3, 7)
    p6 = _limit(6, 7, 6, Side.SELL, 98, 1, 8)          # fills 1 of p3
    cancel_all3 = CancelAll(BTC, 3, 9)
    p7 = _limit(7, 7, 3, Side.BUY, 97, 1, 10)
    sequence = [p1, p1, p2, p2, p1, p3, p4_older, p5, cancel5, cancel5, amend3, amend3, p6,
                amend3, cancel_all3, p7, cancel_all3]
    dropped = 4                                         # p1, p2, p1 again, p4_older
    expected, final_hash = clean_run(env.markets, 0, sequence, env.codec)
    _produce(env, sequence)

    port = free_port()
    proc = spawn_engine("--partitions", "0", "--metrics-port", str(port))
    wait_for(lambda: _committed(env) == len(sequence), 60, "every offset committed")
    values = published_events(env, 0)
    assert values == expected
    assert_seq_contiguous(env, values)
    events = [env.codec.decode_event(v) for v in values]

    # Each Place executed once; the older id after a newer one of residue 7 not at all.
    assert [e.order_id for e in events if type(e) is Accepted] == [
        p.order_id for p in (p1, p2, p3, p5, p6, p7)]
    assert [(t.maker_order_id, t.taker_order_id, t.qty) for t in events if type(t) is Trade] \
        == [(p1.order_id, p2.order_id, 5), (p3.order_id, p6.order_id, 1)]
    # A cancel copy: Rejected(UNKNOWN_ORDER), nothing changes (settlement releases nothing
    # for an order it no longer holds). Never DUPLICATE_ORDER_ID: no Place copy got there.
    # An amend copy after a partial fill would set the remaining quantity back up (3
    # again, though 1 of it traded): Rejected(AMEND_WOULD_ENLARGE), header or not (an
    # amend never enlarges an order, engine.domain).
    assert [(e.order_id, e.code) for e in events if type(e) is Rejected] == [
        (p5.order_id, ResultCode.UNKNOWN_ORDER), (p3.order_id, ResultCode.AMEND_WOULD_ENLARGE)]
    # An amend copy right after it: Amended(priority_kept=True) with the same values, no
    # change.
    assert [(e.price, e.qty, e.priority_kept) for e in events if type(e) is Amended] == [
        (98, 3, False), (98, 3, True)]
    # HAZARD without the header: a CancelAll copy also cancels what the user placed between the two copies.
    assert [(e.order_id, e.remaining, e.reason) for e in events if type(e) is Cancelled] == [
        (p5.order_id, 2, Reason.CANCELED), (p3.order_id, 2, Reason.CANCEL_ALL),
        (p7.order_id, 1, Reason.CANCEL_ALL)]

    metrics = wait_for(lambda: scrape(port, "exchange_engine_duplicate_commands_total"), 30,
                       "the duplicate counter")
    assert metric_value(metrics, 'exchange_engine_duplicate_commands_total{partition="0"}') \
        == dropped
    assert metric_value(metrics, f'exchange_orders_processed_total{{pair="{BTC}"}}') \
        == len(sequence) - dropped
    proc.terminate()
    assert proc.wait(30) == 0
    assert _logged_drops(proc) == dropped
    snap = last_snapshot(env, 0)
    assert snap.input_offset == len(sequence) and snap.state_hash == final_hash
    assert unpack_state(snap.snapshot)[1] == {3: p2.order_id, 7: p7.order_id, 8: p5.order_id}


def _with_copies(n: int, seed: int) -> tuple[list, int]:
    """The standard workload numbered the way accounts numbers orders (five accounts
    partitions), with a copy of an earlier Place after about one command in twelve."""
    def renumber(oid: int) -> int:
        return _oid(oid, oid * 7 % 5)

    rng = random.Random(seed)
    out, places, copies = [], [], 0
    for cmd in to_commands(operations(n, seed=seed), BTC):
        cmd = cmd._replace(order_id=renumber(cmd.order_id))
        out.append(cmd)
        if type(cmd) is Place:
            places.append(cmd)
        if rng.random() < 1 / 12:
            out.append(rng.choice(places[-300:]))       # recent or long finished
            copies += 1
    return out, copies


def _replay(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--no-progress", "--partition", "0", *args],
        cwd=REPO, env={**os.environ, **env.env}, capture_output=True, text=True, timeout=300)


def test_recovery_from_a_snapshot_keeps_dropping_copies(engine_env, spawn_engine):
    env = engine_env
    env.env["KEEL_ENGINE_SNAPSHOT_EVERY_S"] = "3600"    # snapshots only when told below
    work, copies = _with_copies(9_000, seed=41)
    # Each later stretch opens with copies of Places from before it (the last ones of every
    # residue and the very first ones), before any new Place raises a residue's high
    # water: only the filter restored from the snapshot can recognise these.
    def reprise(end: int) -> list:
        older = [c for c in work[:end] if type(c) is Place]
        return older[-15:] + older[:3]

    third = len(work) // 3
    a = third
    commands = work[:a] + reprise(a) + work[a:2 * third]
    b = len(commands)
    commands += reprise(2 * third) + work[2 * third:]
    copies += 2 * 18
    expected, final_hash = clean_run(env.markets, 0, commands, env.codec)
    naive = Engine(env.markets.pairs_on(0))
    assert [env.codec.encode_event(e) for e in naive.apply_many(commands)] != expected, \
        "the copies must matter, or this test proves nothing"

    # 1: a clean stop writes a snapshot at `a`, carrying the filter.
    _produce(env, commands[:a])
    first = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == a, 120, "the first third committed")
    first.terminate()
    assert first.wait(30) == 0
    snap = last_snapshot(env, 0)
    assert snap.input_offset == a and snap.snapshot.startswith(STATE_MAGIC)
    want = DuplicateFilter()
    for cmd in commands[:a]:
        want.check(cmd, None)
    assert unpack_state(snap.snapshot)[1] == want.high

    # 2: restored from that snapshot alone, it drops copies of Places from before `a`;
    # then it dies without a snapshot, so 3 must rebuild the filter by replaying a..b.
    _produce(env, commands[a:b])
    second = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == b, 120, "the second third committed")
    second.kill()
    second.wait(10)
    assert last_snapshot(env, 0).input_offset == a

    _produce(env, commands[b:])
    third = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == len(commands), 120, "everything committed")
    third.terminate()
    assert third.wait(30) == 0
    assert [r["snapshot_offset"] for r in _logged(third, "partition recovered from snapshot")] \
        == [a]

    values = published_events(env, 0)
    assert_seq_contiguous(env, values)
    assert values == expected
    assert_depth_chain(env, 0, {BTC: env.codec.decode_event(values[-1]).seq})
    assert last_snapshot(env, 0).state_hash == final_hash
    # Every copy dropped live exactly once (the third engine's replay of a..b is quiet).
    assert sum(_logged_drops(p) for p in (first, second, third)) == copies

    # `keel replay` drops the same records: from the start, and from the snapshot at `a`.
    whole = _replay(env, "--compare", "--json")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    report = json.loads(whole.stdout.splitlines()[-1])
    assert report["ok"] and report["state_hash"] == final_hash
    assert report["duplicates"] == copies
    part = _replay(env, "--from", str(a + 1), "--compare", "--json")
    assert part.returncode == 0, part.stdout + part.stderr
    report = json.loads(part.stdout.splitlines()[-1])
    assert report["loaded_snapshot"] == a and report["ok"]
    assert report["state_hash"] == final_hash


def test_a_snapshot_without_the_filter_still_restores(engine_env, spawn_engine):
    """A snapshot written before duplicates were dropped (engine bytes alone) restores
    with an empty filter: copies of Places before it are not recognised, later ones are."""
    env = engine_env
    commands, _ = _with_copies(3_000, seed=43)
    cut = len(commands) // 2
    engine = Engine(env.markets.pairs_on(0))
    engine.apply_many(commands[:cut])       # the old engine: no filter at all
    data = engine.snapshot()
    producer = Producer(producer_config(env.settings, "old-snapshot"))
    for key, value, headers in chunk_records(env.codec, 0, cut, data, engine.state_hash(),
                                             commands[cut - 1].ts, 512 * 1024):
        producer.produce(env.settings.topic("engine.snapshots"), value, key, partition=0,
                         headers=headers)
    producer.flush(30)
    committer = Consumer(consumer_config(env.settings, group_id(env.settings.topic_prefix),
                                         "old-committer"))
    committer.commit(offsets=[TopicPartition(env.settings.topic("orders"), 0, cut)],
                     asynchronous=False)
    committer.close()
    _produce(env, commands)

    check = DuplicateFilter().check
    expected = [env.codec.encode_event(ev) for cmd in commands[cut:] if check(cmd, None)
                for ev in engine.apply(cmd)]
    proc = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == len(commands), 120, "everything committed")
    proc.terminate()
    assert proc.wait(30) == 0
    assert published_events(env, 0) == expected
    snap = last_snapshot(env, 0)
    assert snap.input_offset == len(commands) and snap.snapshot.startswith(STATE_MAGIC)
    engine_bytes, high, sources = unpack_state(snap.snapshot)
    assert engine_bytes == engine.snapshot() and high and sources == {}
