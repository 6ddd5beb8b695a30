"""The depth fast path: heads and levels read by array operations agree with the codec on
every record they accept (and accept no record the codec refuses), the Native block holds
exactly those records with their positions, and the depth table loaded through it on real
chDB is identical, column by column, to the table loaded from decoded records."""
from __future__ import annotations

import random
import time
import uuid

import numpy as np
import pytest

from schemas.codec import Codec, CodecError
from schemas.varint import zigzag
from sinks import depth_columns, depth_native
from sinks.clickhouse import ClickHouseStore
from sinks.depth_native import current_header
from tests.sinks.feed import PAIRS, Message, depth_updates


def _head(d: dict) -> tuple:
    return (d["pair"], d["first_update_id"], d["last_update_id"], d["ts"], d["is_snapshot"],
            [(lv["price"], lv["qty"]) for lv in d["bids"]],
            [(lv["price"], lv["qty"]) for lv in d["asks"]])


def _side(levels: depth_columns.Levels) -> list[list[tuple]]:
    cuts = np.cumsum(levels.count)[:-1]
    return [list(zip(p.tolist(), q.tolist(), strict=True)) for p, q in
            zip(np.split(levels.price, cuts), np.split(levels.qty, cuts), strict=True)]


def _heads(h: depth_columns.DepthHeads) -> list[tuple]:
    if not len(h):
        return []
    return [(h.pairs[c], f, la, t, bool(s), b, a) for c, f, la, t, s, b, a in zip(
        h.pair.tolist(), h.first.tolist(), h.last.tolist(), h.ts.tolist(),
        h.snapshot.tolist(), _side(h.bids), _side(h.asks), strict=True)]


@pytest.fixture(params=[depth_columns.CHUNK, 333, "compiled"])
def chunk(request, monkeypatch):
    """The array reader in one go and in pieces of 333 records (joined after), and the
    compiled reader (sinks/_depth.c, built by `make`: missing is a failure here)."""
    if request.param == "compiled":
        assert depth_columns._compiled is not None, "sinks._depth was not built"
        return request.param
    monkeypatch.setattr(depth_columns, "_compiled", None)
    monkeypatch.setattr(depth_columns, "CHUNK", request.param)
    return request.param


@pytest.fixture(params=["arrays", "compiled"])
def reader(request, monkeypatch):
    """Each reader in turn (the array one in its default pieces)."""
    if request.param == "compiled":
        assert depth_columns._compiled is not None, "sinks._depth was not built"
    else:
        monkeypatch.setattr(depth_columns, "_compiled", None)
    return request.param


def test_both_readers_take_and_read_the_same_records():
    """Damaged, cut and odd-framed records: the compiled reader vouches for exactly the
    records the array reader does, and reads them the same."""
    codec = Codec()
    rng = random.Random(21)
    values = []
    for v in (codec.encode("depth_update", d) for d in depth_updates(6000, seed=22)):
        b = bytearray(v)
        roll = rng.random()
        if roll < 0.3:
            b = b[:rng.randrange(len(b))]
        elif roll < 0.7:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif roll < 0.8:
            b = bytearray(_with_sized_block(bytes(b)))
        values.append(bytes(b))
    values += [b"", bytes(40), None]                 # empty, zeros, a tombstone
    compiled = depth_columns._read_compiled(values, current_header())
    arrays = depth_columns.read_arrays(values[:-1], current_header())
    assert compiled.index.tolist() == arrays.index.tolist()
    assert 1000 < len(compiled) < len(values)
    assert _heads(compiled) == _heads(arrays)


def test_heads_agree_with_the_codec(chunk):
    codec = Codec()
    depth = depth_updates(2000)
    values = [codec.encode("depth_update", d) for d in depth]
    heads = depth_columns.read(values, current_header())
    assert heads.index.tolist() == list(range(len(values)))
    assert _heads(heads) == [_head(d) for d in depth]
    assert heads.levels.tolist() == [len(d["bids"]) + len(d["asks"]) for d in depth]
    # Records picked out (any order) and heads put together keep every record's levels.
    rows = np.array([7, 3, 1999, 0, 1000])
    part = depth_columns.concat([heads.take(rows), heads.take(rows[::-1])])
    assert _heads(part) == [_head(depth[i]) for i in [*rows, *rows[::-1]]]


def levels(depth: list[dict]):
    """Every price level of `depth`, bids and asks."""
    return (lv for d in depth for side in ("bids", "asks") for lv in d[side])


def reads_as_the_codec(depth: list[dict]) -> depth_columns.DepthHeads:
    """`depth` encoded by the codec and read back by the fast path, checked to be the
    codec's records one by one; the heads read, for further checks."""
    codec = Codec()
    values = [codec.encode("depth_update", d) for d in depth]
    heads = depth_columns.read(values, current_header())
    assert heads.index.tolist() == list(range(len(values)))
    assert _heads(heads) == [_head(d) for d in depth]
    return heads


def test_levels_of_every_varint_width_agree_with_the_codec(chunk):
    """Prices and quantities from 0 to 2^61 (zigzag varints of 1 to 9 bytes), either sign."""
    rng = random.Random(12)
    depth = depth_updates(1500, seed=13)
    for lv in levels(depth):
        lv["price"] = rng.choice((1, -1)) * rng.getrandbits(rng.randint(0, 61))
        lv["qty"] = rng.getrandbits(rng.randint(0, 61))
    reads_as_the_codec(depth)


def test_damaged_records_are_refused_or_read_as_the_codec_reads_them(chunk):
    codec = Codec()
    rng = random.Random(5)
    values = [codec.encode("depth_update", d) for d in depth_updates(3000, seed=8)]
    damaged = []
    for v in values:
        b = bytearray(v)
        if rng.random() < 0.5:
            b = b[:rng.randrange(len(b))]                       # cut short
        else:
            for _ in range(rng.randint(1, 3)):                  # bytes changed
                b[rng.randrange(len(b))] = rng.randrange(256)
        damaged.append(bytes(b))
    # A long negative count and a block with its byte size are still valid Avro.
    d = depth_updates(1, seed=9)[0]
    damaged.append(_with_sized_block(codec.encode("depth_update", d)))
    heads = depth_columns.read(damaged, current_header())
    accepted = dict(zip(heads.index.tolist(), _heads(heads), strict=True))
    assert len(accepted) > 100 and len(damaged) - 1 in accepted
    for i, value in enumerate(damaged):
        try:
            record = codec.decode("depth_update", value)
        except CodecError:
            assert i not in accepted, i
            continue
        if i in accepted:
            assert accepted[i] == _head(record), i


def _with_sized_block(value: bytes) -> bytes:
    """The same record with its bids written as one block of negative count and size."""
    codec = Codec()
    d = codec.decode("depth_update", value)
    body = b"".join(zigzag(lv["price"]) + zigzag(lv["qty"]) for lv in d["bids"])
    plain = codec.encode("depth_update", {**d, "bids": []})
    # plain: ...flag, 0 (empty bids), asks...; put the sized block before that 0.
    head = codec.encode("depth_update", {**d, "bids": [], "asks": []})[:-2]
    rest = plain[len(head):]
    assert rest[0] == 0
    return head + zigzag(-len(d["bids"])) + zigzag(len(body)) + body + rest


def test_native_block_round_trip(clickhouse_client, tmp_path):
    codec = Codec()
    depth = depth_updates(500, pairs=("BTCUSDT", "ETHUSDT", "A"))
    depth[3]["bids"] = depth[3]["asks"] = []
    values = [codec.encode("depth_update", d) for d in depth]
    heads = depth_columns.read(values, current_header())
    offsets = np.arange(1000, 1500) * 7 + (1 << 40)
    partitions = np.arange(500) % 3 + 65_533
    path = tmp_path / "block.native"
    path.write_bytes(b"".join(depth_native.block(heads, partitions, offsets)))
    got = clickhouse_client.query(
        f"SELECT pair, toUnixTimestamp64Milli(ts), first_update_id, last_update_id, "
        f"is_snapshot, arrayZip(bid_prices, bid_qtys), arrayZip(ask_prices, ask_qtys), "
        f"_partition, _offset FROM file('{path}', 'Native')").result_rows
    assert [(p, o) for *_, p, o in got] == list(zip(partitions.tolist(), offsets.tolist(),
                                                    strict=True))
    assert [(r[0], r[2], r[3], r[1], r[4], list(r[5]), list(r[6])) for r in got] == \
        [_head(d) for d in depth]


def test_clear_blocks_removes_only_block_files(tmp_path):
    for name in ("depth-a1.native", "depth-b2.native", "notes.txt", "depth.csv"):
        (tmp_path / name).write_bytes(b"x")
    assert depth_native.clear_blocks(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.csv", "notes.txt"]
    assert depth_native.clear_blocks(tmp_path) == 0


@pytest.fixture
def two_databases(clickhouse_client):
    names = [f"depth_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield names
    clickhouse_client.command("USE default")
    for name in names:
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def _both_paths(clickhouse_client, two_databases, codec, batches, check) -> list:
    """`batches` prepared and written by the decoded path, then by the fast path, each
    into a database of its own (`check(raw, batch, items, ends)` on every prepared batch);
    the two depth tables' rows."""
    tables = []
    for raw, name in zip((False, True), two_databases, strict=True):
        clickhouse_client.command(f"CREATE DATABASE {name}")
        clickhouse_client.command(f"USE {name}")
        store = ClickHouseStore(clickhouse_client, "events", "depth", raw_depth=raw)
        store.ensure_schema()
        prepare = store.prepare(codec)
        for batch in batches:
            items, dead, ends = prepare(batch)
            assert not dead
            check(raw, batch, items, ends)
            store.write(items)
        tables.append(clickhouse_client.query(
            "SELECT * FROM depth ORDER BY _partition, _offset").result_rows)
    return tables


def test_the_fast_path_loads_the_same_table_as_decoded_records(clickhouse_client,
                                                               two_databases):
    codec = Codec()
    # Across a day boundary (blocks are cut there), in batches, with a replay of part of
    # an earlier batch (dropped by the marks on both paths).
    # (recent: the table's TTL would drop old rows)
    t0 = int(time.time() * 1000) // 86_400_000 * 86_400_000 - 1500
    depth = depth_updates(6000, t0_ms=t0)
    msgs = [Message("depth", PAIRS.index(d["pair"]), i, codec.encode("depth_update", d))
            for i, d in enumerate(depth)]
    batches = [msgs[:2500], msgs[2500:4000], msgs[1000:3000] + msgs[4000:]]

    def check(raw: bool, batch: list, items: list, ends: dict) -> None:
        assert ends == {("depth", m.partition()): m.offset() for m in batch}  # the last
        assert {kind for kind, *_ in items} == ({3} if raw else {1})

    tables = _both_paths(clickhouse_client, two_databases, codec, batches, check)
    assert len(tables[0]) == len(depth)
    assert tables[1] == tables[0]
    days = {row[1].date() for row in tables[1]}
    assert len(days) == 2


def test_a_block_clickhouse_refuses_goes_through_the_codec(clickhouse_client,
                                                          two_databases, monkeypatch):
    from sinks.clickhouse import RawDepth

    codec = Codec()
    depth = depth_updates(300)
    values = [codec.encode("depth_update", d) for d in depth]
    heads = depth_columns.read(values, current_header())
    broken = list(values)
    broken[123] = values[123][:25]          # past the walk only because it is bypassed here
    # A Native block ClickHouse cannot read (cut short), as a bug of ours would make.
    block = depth_native.block
    monkeypatch.setattr(depth_native, "block",
                        lambda *a: [b"".join(block(*a))[:-9]])
    name = two_databases[0]
    clickhouse_client.command(f"CREATE DATABASE {name}")
    clickhouse_client.command(f"USE {name}")
    letters = []
    store = ClickHouseStore(clickhouse_client, "events", "depth", raw_depth=True,
                            dead_letter=lambda *letter: letters.append(letter))
    store.ensure_schema()
    offsets = np.arange(len(values), dtype=np.int64)
    store.write([(3, 0, 0, RawDepth(broken, offsets, heads))])
    assert [(t, p, o, v) for t, p, o, v, _ in letters] == [("depth", 0, 123, broken[123])]
    got = clickhouse_client.query("SELECT _offset FROM depth ORDER BY _offset").result_rows
    assert [o for (o,) in got] == [i for i in range(len(values)) if i != 123]


def test_a_pair_on_two_partitions_loads_as_decoded_records(clickhouse_client, two_databases):
    """A batch is one chunk on the fast path (partitions interleaved as polled); a pair
    whose records sit on two partitions is still marked partition after partition in
    the order they first come, as the decoded path does, and the block goes in in pair
    order whichever partition came first."""
    codec = Codec()
    depth = depth_updates(3000)
    # Records of both pairs on both partitions, in runs of 100, partition 1 first.
    msgs = [Message("depth", 1 - (i // 100) % 2, i, codec.encode("depth_update", d))
            for i, d in enumerate(depth)]
    batches = [msgs[:1700], msgs[900:]]           # the second replays part of the first

    def check(raw: bool, batch: list, items: list, ends: dict) -> None:
        if raw:
            assert len(items) == 1 and items[0][0] == 3

    tables = _both_paths(clickhouse_client, two_databases, codec, batches, check)
    assert tables[1] == tables[0]
    assert {(row[0], row[9]) for row in tables[1]} == {(p, q) for p in PAIRS for q in (0, 1)}
