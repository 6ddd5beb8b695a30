"""Copies of any kind of command, recognised by their keel-source header, on the real broker.

accounts writes every keel.orders record with `keel-source: b"<accounts partition>:<request
offset>"`; after a crash it writes some again with the same header. The engine drops a
record whose offset is not above the last one seen from its partition (no event, no seq,
offset committed, counted), dead-letters a malformed header, and keeps that map across
snapshots, recovery replay and `keel replay`. A Place is judged by its id alone (accounts
derives it from the same partition and offset); its header is not read.
"""
from __future__ import annotations

import hashlib
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
from engine.service.snapshots import STATE_MAGIC, chunk_records, pack_state, unpack_state
from engine.service.tools import clean_run, produce_values, read_partition
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


def _oid(offset: int, partition: int) -> int:
    """The id accounts gives the order of request `offset` on its partition."""
    return (offset + 1) * ORDER_ID_STRIDE + partition


def _src(partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [("keel-source", f"{partition}:{offset}".encode())]


def _limit(offset: int, partition: int, user: int, side: Side, price: int, qty: int,
           ts: int) -> Place:
    return Place(BTC, _oid(offset, partition), user, side, OrderKind.LIMIT, TimeInForce.GTC,
                 price, qty, 0, 0, ts)


def _produce(env, records) -> None:
    """(command, headers) records; each distinct command encoded once, so a copy is the
    very same bytes with the very same header."""
    blobs: dict = {}
    produce_values(env.settings, env.settings.topic("orders"), 0,
                   ((c.pair.encode(), blobs.setdefault(c, env.codec.encode_command(c)), h)
                    for c, h in records))


def _committed(env) -> int:
    return committed_orders(env)


def _logged(proc, msg: str) -> list[dict]:
    return logged(log_of(proc), msg)


def _drops(proc) -> list[dict]:
    return _logged(proc, "dropped duplicate commands")


def _replay(env, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--no-progress", "--partition", "0",
         "--json", *args],
        cwd=REPO, env={**os.environ, **env.env}, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_copies_of_every_kind_with_the_same_source_are_dropped(engine_env, spawn_engine):
    env = engine_env
    a = _limit(10, 3, 1, Side.BUY, 100, 5, 1)
    amend_a = Amend(BTC, a.order_id, 1, 100, 4, 2)
    b = _limit(7, 5, 2, Side.SELL, 100, 1, 3)          # fills 1 of a: 3 remain
    cancel_all = CancelAll(BTC, 1, 4)
    c = _limit(13, 3, 1, Side.BUY, 99, 2, 5)
    d = _limit(8, 5, 2, Side.SELL, 101, 2, 6)           # partition 5's offsets are its own
    cancel_d = Cancel(BTC, d.order_id, 2, 7)
    amend_c = Amend(BTC, c.order_id, 1, 99, 1, 8)
    cancel_all_again = CancelAll(BTC, 1, 9)              # a new request: executes
    e = _limit(16, 3, 1, Side.BUY, 98, 1, 10)
    amend_e = Amend(BTC, e.order_id, 1, 98, 1, 11)
    f = _limit(17, 3, 1, Side.BUY, 97, 1, 12)
    cancel_e = Cancel(BTC, e.order_id, 1, 13)
    g = _limit(19, 3, 1, Side.SELL, 120, 1, 14)
    records = [
        (a, _src(3, 10)), (amend_a, _src(3, 11)), (b, _src(5, 7)),
        (amend_a, _src(3, 11)),             # copy after the partial fill: would make it 4
        (cancel_all, _src(3, 12)), (c, _src(3, 13)),
        (cancel_all, _src(3, 12)),          # copy: would cancel c, placed in between
        (c, _src(3, 13)),                   # copy of a Place: its id rule drops it
        (d, _src(5, 8)), (cancel_d, _src(5, 9)),
        (cancel_d, _src(5, 9)),             # copy: would be Rejected(UNKNOWN_ORDER)
        (amend_c, _src(3, 14)), (cancel_all_again, _src(3, 15)), (e, _src(3, 16)),
        (amend_e, None), (amend_e, None),   # no header: the Place-id rule only, both run
        (f, [("keel-source", b"3:x")]),     # a Place's header is not read: f executes
        (Amend(BTC, e.order_id, 1, 98, 2, 12), [("keel-source", b"3:x")]),
        (cancel_all_again, [("keel-source", b"9999:1")]),
        (Cancel(BTC, e.order_id, 1, 12), _src(3, 18) * 2),
        (cancel_e, _src(3, 18)),            # dead letters moved nothing: 18 is new
        (g, _src(3, 19)),
    ]
    copies, bad = [3, 6, 7, 10], [17, 18, 19]
    headers = [h for _, h in records]
    expected, final_hash = clean_run(env.markets, 0, [r[0] for r in records], env.codec,
                                     headers=headers)
    _produce(env, records)

    port = free_port()
    proc = spawn_engine("--partitions", "0", "--metrics-port", str(port))
    wait_for(lambda: _committed(env) == len(records), 60, "every offset committed")
    values = published_events(env, 0)
    assert values == expected
    assert_seq_contiguous(env, values)
    events = [env.codec.decode_event(v) for v in values]
    assert [e.order_id for e in events if type(e) is Accepted] == [
        p.order_id for p in (a, b, c, d, e, f, g)]
    assert [(t.maker_order_id, t.taker_order_id, t.qty) for t in events if type(t) is Trade] \
        == [(a.order_id, b.order_id, 1)]
    # The amend copy never ran: a stays at 3 and is cancelled with 3; nor did the
    # dead-lettered Amend of e (qty 2).
    assert [(e.order_id, e.price, e.qty) for e in events if type(e) is Amended] == [
        (a.order_id, 100, 4), (c.order_id, 99, 1), (e.order_id, 98, 1), (e.order_id, 98, 1)]
    # The CancelAll copy never ran: c lived until the second CancelAll, a new request.
    assert [(e.order_id, e.remaining, e.reason) for e in events if type(e) is Cancelled] == [
        (a.order_id, 3, Reason.CANCEL_ALL), (d.order_id, 2, Reason.CANCELED),
        (c.order_id, 1, Reason.CANCEL_ALL), (e.order_id, 1, Reason.CANCELED)]
    assert not [e for e in events if type(e) is Rejected]

    letters = [env.codec.decode("dead_letter", m.value())
               for m in read_partition(env.settings, env.settings.topic("dlq"), 0)]
    assert [(d["offset"], d["error_code"]) for d in letters] == [
        (off, int(ResultCode.INVALID_REQUEST)) for off in bad]
    assert "decimal digits" in letters[0]["reason"]
    assert "below 4096" in letters[1]["reason"]
    assert "2 keel-source headers" in letters[2]["reason"]

    metrics = wait_for(lambda: scrape(port, "exchange_engine_duplicate_commands_total"), 30,
                       "the duplicate counter")
    assert metric_value(metrics, 'exchange_engine_duplicate_commands_total{partition="0"}') \
        == len(copies)
    assert metric_value(metrics, f'exchange_orders_processed_total{{pair="{BTC}"}}') \
        == len(records) - len(copies) - len(bad)
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(30) == 0
    assert "Traceback" not in log_of(proc)
    kinds: dict[str, int] = {}
    for rec in _drops(proc):
        for kind, n in rec["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    assert kinds == {"Amend": 1, "CancelAll": 1, "Place": 1, "Cancel": 1}
    snap = last_snapshot(env, 0)
    assert snap.input_offset == len(records) and snap.state_hash == final_hash
    _, high, sources = unpack_state(snap.snapshot)
    assert sources == {3: 18, 5: 9}
    assert high == {3: g.order_id, 5: d.order_id}


def _accounts_stream(n: int, seed: int) -> tuple[list, int]:
    """The standard workload as accounts would write it: 40 users on accounts partitions
    0, 3 and 5, request offsets rising per partition (with gaps for requests that make no
    command), ids from the offsets, some Amends and CancelAlls, and after about one
    record in twelve a copy of a recent record with its header."""
    rng = random.Random(seed)
    parts = (0, 3, 5)
    next_offset = dict.fromkeys(parts, 0)
    ids: dict[int, tuple[int, int]] = {}         # workload id -> (accounts id, user)
    out: list = []
    places: list[Place] = []
    copies = 0

    def source(user: int) -> list:
        p = parts[user % 3]
        offset = next_offset[p] + rng.randint(0, 2)
        next_offset[p] = offset + 1
        return p, offset

    for cmd in to_commands(operations(n, seed=seed), BTC):
        if type(cmd) is Place:
            user = cmd.order_id % 40 + 1
            p, offset = source(user)
            ids[cmd.order_id] = (_oid(offset, p), user)
            cmd = cmd._replace(order_id=_oid(offset, p), user_id=user)
            places.append(cmd)
        else:
            oid, user = ids[cmd.order_id]
            p, offset = source(user)
            cmd = cmd._replace(order_id=oid, user_id=user)
        out.append((cmd, _src(p, offset)))
        roll = rng.random()
        if roll < 0.05:
            target = rng.choice(places[-50:])
            p, offset = source(target.user_id)
            out.append((Amend(BTC, target.order_id, target.user_id, target.price,
                              max(1, target.qty // 2), cmd.ts), _src(p, offset)))
        elif roll < 0.06:
            user = rng.randint(1, 40)
            p, offset = source(user)
            out.append((CancelAll(BTC, user, cmd.ts), _src(p, offset)))
        if rng.random() < 1 / 12:
            out.append(rng.choice(out[-300:]))
            copies += 1
    return out, copies


def _reprise(records: list) -> list:
    """Copies of the last records before a cut (every kind), then of the very first."""
    return records[-25:] + records[:3]


def test_recovery_and_replay_keep_dropping_copies(engine_env, spawn_engine):
    env = engine_env
    env.env["KEEL_ENGINE_SNAPSHOT_EVERY_S"] = "3600"    # snapshots only when told below
    work, copies = _accounts_stream(6_000, seed=51)
    third = len(work) // 3
    a = third
    records = work[:a] + _reprise(work[:a]) + work[a:2 * third]
    b = len(records)
    records += _reprise(work[:2 * third]) + work[2 * third:]
    copies += 2 * 28
    assert {type(c) for c, _ in records[a:a + 25]} >= {Place, Cancel}
    commands, headers = [c for c, _ in records], [h for _, h in records]
    expected, final_hash = clean_run(env.markets, 0, commands, env.codec, headers=headers)
    # Without the headers (the Place-id rule alone) the result differs: the copies of
    # Cancels, Amends and CancelAlls matter, or this test proves nothing.
    assert clean_run(env.markets, 0, commands, env.codec)[0] != expected

    # 1: a clean stop writes a snapshot at `a`, carrying the source map.
    _produce(env, records[:a])
    first = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == a, 120, "the first third committed")
    first.terminate()
    assert first.wait(30) == 0
    snap = last_snapshot(env, 0)
    assert snap.input_offset == a and snap.snapshot.startswith(STATE_MAGIC)
    want = DuplicateFilter()
    for cmd, h in records[:a]:
        want.check(cmd, h)
    assert unpack_state(snap.snapshot)[2] == want.sources and len(want.sources) == 3

    # 2: restored from that snapshot alone, it drops copies of records from before `a`;
    # then it dies without a snapshot, so 3 must rebuild the map by replaying a..b.
    _produce(env, records[a:b])
    second = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == b, 120, "the second third committed")
    second.kill()
    second.wait(10)
    assert last_snapshot(env, 0).input_offset == a

    _produce(env, records[b:])
    third_proc = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == len(records), 120, "everything committed")
    third_proc.terminate()
    assert third_proc.wait(30) == 0
    assert [r["snapshot_offset"] for r in _logged(third_proc, "partition recovered from snapshot")] \
        == [a]

    values = published_events(env, 0)
    assert_seq_contiguous(env, values)
    assert values == expected
    assert_depth_chain(env, 0, {BTC: env.codec.decode_event(values[-1]).seq})
    assert last_snapshot(env, 0).state_hash == final_hash
    # Every copy dropped live exactly once (the third engine's replay of a..b is quiet).
    assert sum(r["count"] for p in (first, second, third_proc) for r in _drops(p)) == copies

    # `keel replay` drops the same records: from the start, and from the snapshot at `a`.
    whole = _replay(env, "--compare")
    assert whole["ok"] and whole["state_hash"] == final_hash, whole
    assert whole["duplicates"] == copies
    part = _replay(env, "--from", str(a + 1), "--compare")
    assert part["loaded_snapshot"] == a and part["ok"], part
    assert part["state_hash"] == final_hash


def test_a_version_1_snapshot_restores_and_audits(engine_env, spawn_engine):
    """A snapshot written before keel-source (version 1: books and Place ids) restores
    with an empty source map; the engine learns the map from the records after it and
    its next snapshot is version 2. `keel replay --compare` across it checks that
    snapshot's hash in version 1."""
    env = engine_env
    work, _ = _accounts_stream(2_000, seed=53)
    cut = len(work) // 2
    # What a version-1 engine did up to the cut: the Place-id rule only.
    old = DuplicateFilter()
    engine = Engine(env.markets.pairs_on(0))
    published = [env.codec.encode_event(ev) for cmd, _ in work[:cut]
                 if old.check(cmd, None) is True for ev in engine.apply(cmd)]
    data = pack_state(engine.snapshot(), old.items(), [], version=1)
    producer = Producer(producer_config(env.settings, "v1-snapshot"))
    for value in published:
        producer.produce(env.settings.topic("events"), value, BTC.encode(), partition=0)
    for key, value, hdrs in chunk_records(env.codec, 0, cut, data,
                                          hashlib.sha256(data).hexdigest(),
                                          work[cut - 1][0].ts, 512 * 1024):
        producer.produce(env.settings.topic("engine.snapshots"), value, key, partition=0,
                         headers=hdrs)
    producer.flush(30)
    committer = Consumer(consumer_config(env.settings, group_id(env.settings.topic_prefix),
                                         "v1-committer"))
    committer.commit(offsets=[TopicPartition(env.settings.topic("orders"), 0, cut)],
                     asynchronous=False)
    committer.close()
    # After the cut: a copy of a Place from before it (the restored ids drop it), then
    # records whose copies come after the cut (the map learnt since the restore drops them).
    later = work[cut:]
    tail = [r for r in later[-40:] if type(r[0]) is not Place][:10]
    records = work[:cut] + [next(r for r in reversed(work[:cut]) if type(r[0]) is Place)] \
        + later + tail
    _produce(env, records)

    restored = DuplicateFilter(dict(old.items()))      # what the engine must restore
    expected = [env.codec.encode_event(ev) for cmd, h in records[cut:]
                if restored.check(cmd, h) is True for ev in engine.apply(cmd)]
    proc = spawn_engine("--partitions", "0")
    wait_for(lambda: _committed(env) == len(records), 120, "everything committed")
    proc.terminate()
    assert proc.wait(30) == 0
    assert [r["snapshot_offset"] for r in _logged(proc, "partition recovered from snapshot")] \
        == [cut]
    assert published_events(env, 0) == published + expected
    snap = last_snapshot(env, 0)
    assert snap.input_offset == len(records) and snap.snapshot[8:10] == b"\x02\x00"
    engine_bytes, high, sources = unpack_state(snap.snapshot)
    assert engine_bytes == engine.snapshot()
    assert high == restored.high and sources == restored.sources and len(sources) == 3
    assert len(tail) >= 3 and restored.dropped >= 1 + len(tail)
    assert sum(r["count"] for r in _drops(proc)) == restored.dropped

    # From the cut: before it, a replay with today's rules would drop copies the version-1
    # engine executed (its events are on keel.events), so only the range after it audits.
    report = _replay(env, "--from", str(cut), "--compare")
    assert report["ok"] and report["loaded_snapshot"] == cut, str(report)
    assert report["snapshots_checked"] == 2         # the version-1 one and the last
