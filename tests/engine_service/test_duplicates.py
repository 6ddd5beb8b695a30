"""The duplicate-Place rule and the versioned partition state it lives in (pure: no broker)."""
from __future__ import annotations

import hashlib
import struct

import pytest

from engine.domain import Amend, Cancel, CancelAll, Place, SetTrading
from engine.engine import Engine
from engine.markets import parse_markets
from engine.service.duplicates import ORDER_ID_STRIDE, PlaceFilter
from engine.service.snapshots import STATE_MAGIC, pack_state, partition_hash, unpack_state
from engine.snapshot import SnapshotError
from streams.ledger import ORDER_ID_STRIDE as ACCOUNTS_STRIDE


def _place(order_id: int, ts: int = 1) -> Place:
    return Place("BTCUSDT", order_id, 7, 0, 0, 0, 100, 1, 0, 0, ts)


def _oid(n: int, partition: int) -> int:
    return n * ORDER_ID_STRIDE + partition


def test_stride_is_the_one_accounts_numbers_orders_with():
    assert ORDER_ID_STRIDE == ACCOUNTS_STRIDE


def test_only_a_rising_id_per_residue_executes():
    f = PlaceFilter()
    assert f.fresh(_place(_oid(1, 3)))
    assert not f.fresh(_place(_oid(1, 3)))              # the same Place again
    assert not f.fresh(_place(_oid(1, 3), ts=99))       # same id, any content
    assert f.fresh(_place(_oid(1, 4)))                  # another accounts partition
    assert f.fresh(_place(_oid(5, 3)))
    assert not f.fresh(_place(_oid(4, 3)))              # older than the last of its residue
    assert f.fresh(_place(_oid(2, 4)))                  # residue 4 only saw n=1
    assert f.dropped == 3
    assert f.items() == [(3, _oid(5, 3)), (4, _oid(2, 4))]


def test_other_commands_are_never_filtered():
    f = PlaceFilter({3: _oid(9, 3)})
    for cmd in (Cancel("BTCUSDT", _oid(1, 3), 7, 1), Amend("BTCUSDT", _oid(1, 3), 7, 5, 5, 1),
                CancelAll("BTCUSDT", 7, 1), SetTrading("BTCUSDT", True, 1)):
        assert f.fresh(cmd) and f.fresh(cmd)
    assert f.dropped == 0 and f.high == {3: _oid(9, 3)}


def test_accounts_streams_pass_and_a_resent_stretch_is_dropped():
    # Two accounts partitions forwarding in counter order, interleaved on one pair partition.
    stream = [_place(_oid(n, p)) for n in range(1, 200) for p in (0, 5)]
    f = PlaceFilter()
    assert all(f.fresh(c) for c in stream)
    # accounts crashed and re-derived its last 30 Places (tansu showed the aborted ones).
    assert not any(f.fresh(c) for c in stream[-30:])
    # Plain 1, 2, 3... ids (tests, benchmarks) rise in every residue: nothing is dropped.
    g = PlaceFilter()
    assert all(g.fresh(_place(i)) for i in range(1, 3 * ORDER_ID_STRIDE))
    assert g.dropped == 0


def test_negative_and_zero_ids_have_a_residue_too():
    f = PlaceFilter()
    assert f.fresh(_place(-1)) and f.fresh(_place(0))
    assert not f.fresh(_place(-1 - ORDER_ID_STRIDE))    # same residue (4095), lower
    engine_bytes = Engine(parse_markets(_MARKETS).pairs_on(0)).snapshot()
    assert unpack_state(pack_state(engine_bytes, f.items()))[1] == f.high


_MARKETS = {
    "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}},
    "markets": [{"pair": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
                 "lot_size": "0.001", "partition": 0}],
}


def _engine_bytes() -> bytes:
    engine = Engine(parse_markets(_MARKETS).pairs_on(0))
    engine.apply(_place(_oid(1, 3)))
    return engine.snapshot()


def test_state_round_trips_and_its_hash_covers_the_filter():
    data = _engine_bytes()
    high = [(3, _oid(1, 3)), (17, _oid(40, 17))]
    packed = pack_state(data, high)
    assert packed.startswith(STATE_MAGIC)
    assert unpack_state(packed) == (data, dict(high))
    assert partition_hash(data, high) == hashlib.sha256(packed).hexdigest()
    assert partition_hash(data, high) != partition_hash(data, high[:1])
    assert partition_hash(data, []) != hashlib.sha256(data).hexdigest()


def test_a_snapshot_written_before_the_filter_restores_with_an_empty_one():
    data = _engine_bytes()
    assert unpack_state(data) == (data, {})


@pytest.mark.parametrize("damage, words", [
    (lambda p: b"NOPE" + p[4:], "neither"),
    (lambda p: p[:8] + struct.pack("<H", 2) + p[10:], "version 2"),
    (lambda p: p[:-1], "entries"),
    (lambda p: p + b"\x00", "entries"),
    (lambda p: p[:20], "truncated"),
])
def test_damaged_state_is_refused_with_the_reason(damage, words):
    packed = pack_state(_engine_bytes(), [(3, _oid(1, 3))])
    with pytest.raises(SnapshotError, match=words):
        unpack_state(damage(packed))


@pytest.mark.parametrize("high", [
    [(5, _oid(1, 5)), (3, _oid(1, 3))],         # not ascending
    [(3, _oid(1, 4))],                          # id not of its residue
    [(ORDER_ID_STRIDE, 2 * ORDER_ID_STRIDE)],   # residue out of range
])
def test_a_filter_entry_that_cannot_be_right_is_refused(high):
    with pytest.raises(SnapshotError, match="out of order or not of its residue"):
        unpack_state(pack_state(_engine_bytes(), high))
