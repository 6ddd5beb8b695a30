"""The duplicate rules (Place id, keel-source) and the versioned partition state they live
in (pure: no broker)."""
from __future__ import annotations

import hashlib
import random
import struct

import pytest

from engine.domain import Amend, Cancel, CancelAll, Place, ResultCode, SetTrading
from engine.engine import Engine
from engine.markets import parse_markets
from engine.service.duplicates import ORDER_ID_STRIDE, DuplicateFilter, parse_source
from engine.service.routing import Fault
from engine.service.snapshots import (
    STATE_MAGIC,
    legacy_hashes,
    pack_state,
    partition_hash,
    unpack_state,
)
from engine.snapshot import SnapshotError
from streams.ledger import ORDER_ID_STRIDE as ACCOUNTS_STRIDE


def _place(order_id: int, ts: int = 1) -> Place:
    return Place("BTCUSDT", order_id, 7, 0, 0, 0, 100, 1, 0, 0, ts)


def _oid(n: int, partition: int) -> int:
    return n * ORDER_ID_STRIDE + partition


class _Places(DuplicateFilter):
    """The filter as a headerless writer meets it: the Place-id rule alone."""

    __slots__ = ()

    def fresh(self, cmd) -> bool:
        verdict = self.check(cmd, None)
        assert type(verdict) is bool
        return verdict


def test_stride_is_the_one_accounts_numbers_orders_with():
    assert ORDER_ID_STRIDE == ACCOUNTS_STRIDE


def test_only_a_rising_id_per_residue_executes():
    f = _Places()
    assert f.fresh(_place(_oid(1, 3)))
    assert not f.fresh(_place(_oid(1, 3)))              # the same Place again
    assert not f.fresh(_place(_oid(1, 3), ts=99))       # same id, any content
    assert f.fresh(_place(_oid(1, 4)))                  # another accounts partition
    assert f.fresh(_place(_oid(5, 3)))
    assert not f.fresh(_place(_oid(4, 3)))              # older than the last of its residue
    assert f.fresh(_place(_oid(2, 4)))                  # residue 4 only saw n=1
    assert f.dropped == 3
    assert f.items() == [(3, _oid(5, 3)), (4, _oid(2, 4))]


def test_without_a_header_other_commands_are_not_filtered():
    f = _Places({3: _oid(9, 3)})
    for cmd in (Cancel("BTCUSDT", _oid(1, 3), 7, 1), Amend("BTCUSDT", _oid(1, 3), 7, 5, 5, 1),
                CancelAll("BTCUSDT", 7, 1), SetTrading("BTCUSDT", True, 1)):
        assert f.fresh(cmd) and f.fresh(cmd)
    assert f.dropped == 0 and f.high == {3: _oid(9, 3)}


def test_accounts_streams_pass_and_a_resent_stretch_is_dropped():
    # Two accounts partitions forwarding in counter order, interleaved on one pair partition.
    stream = [_place(_oid(n, p)) for n in range(1, 200) for p in (0, 5)]
    f = _Places()
    assert all(f.fresh(c) for c in stream)
    # accounts crashed and re-derived its last 30 Places (tansu showed the aborted ones).
    assert not any(f.fresh(c) for c in stream[-30:])
    # Plain 1, 2, 3... ids (tests, benchmarks) rise in every residue: nothing is dropped.
    g = _Places()
    assert all(g.fresh(_place(i)) for i in range(1, 3 * ORDER_ID_STRIDE))
    assert g.dropped == 0


def test_negative_and_zero_ids_have_a_residue_too():
    f = _Places()
    assert f.fresh(_place(-1)) and f.fresh(_place(0))
    assert not f.fresh(_place(-1 - ORDER_ID_STRIDE))    # same residue (4095), lower
    engine_bytes = Engine(parse_markets(_MARKETS).pairs_on(0)).snapshot()
    assert unpack_state(pack_state(engine_bytes, f.items(), []))[1] == f.high


_MARKETS = {
    "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}},
    "markets": [{"pair": "BTCUSDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
                 "lot_size": "0.001", "partition": 0}],
}


def _engine_bytes() -> bytes:
    engine = Engine(parse_markets(_MARKETS).pairs_on(0))
    engine.apply(_place(_oid(1, 3)))
    return engine.snapshot()


# ---- keel-source ----

def _src(partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [("keel-source", f"{partition}:{offset}".encode())]


_AMEND = Amend("BTCUSDT", _oid(11, 3), 7, 98, 3, 2)
_CANCEL_ALL = CancelAll("BTCUSDT", 7, 3)


def test_any_kind_but_place_with_a_source_offset_not_above_the_last_is_dropped():
    f = DuplicateFilter()
    assert f.check(_place(_oid(11, 3)), _src(3, 10)) is True
    assert f.sources == {}                                      # a Place's header: unread
    assert f.check(_AMEND, _src(3, 11)) is True
    assert f.check(_AMEND, _src(3, 11)) is False                # the copy
    assert f.check(_CANCEL_ALL, _src(3, 12)) is True
    assert f.check(_place(_oid(14, 3)), _src(3, 13)) is True
    assert f.check(_CANCEL_ALL, _src(3, 12)) is False           # copy after a newer one
    assert f.check(Cancel("BTCUSDT", 1, 7, 4), _src(3, 5)) is False     # older still
    assert f.check(SetTrading("BTCUSDT", True, 5), _src(3, 12)) is False
    assert f.check(_AMEND, _src(5, 2)) is True                  # another accounts partition
    assert f.check(_AMEND, _src(3, 14)) is True                 # a later request: executes
    assert f.dropped == 4
    # Places moved no source mark (10 and 13 were theirs); their ids hold their offsets.
    assert f.source_items() == [(3, 14), (5, 2)]
    assert f.items() == [(3, _oid(14, 3))]


def test_a_place_is_judged_by_its_id_and_its_header_is_never_read():
    f = DuplicateFilter({}, {3: 50})
    assert f.check(_place(_oid(9, 3)), _src(3, 8)) is True      # 8 < 50: the header is ignored
    assert f.check(_place(_oid(9, 3)), _src(3, 60)) is False    # a fresh header, an old id
    assert f.check(_place(_oid(10, 3)), _src(3, 8)) is True
    assert f.sources == {3: 50} and f.high == {3: _oid(10, 3)} and f.dropped == 1

    class Unreadable:
        def headers(self):
            raise AssertionError("a Place's headers were read")

    assert f.admit(_place(_oid(11, 3)), Unreadable()) is True
    assert f.admit(_place(_oid(11, 3)), Unreadable()) is False


def test_for_accounts_records_the_id_rule_drops_what_the_header_rule_would():
    # Every record from accounts: a Place's id and header name the same (p, o). Whichever
    # stretch is written again, the copies dropped are exactly the repeated offsets.
    rng = random.Random(11)
    for _ in range(200):
        stream = []
        for o in range(60):
            p = rng.choice((0, 3, 5))
            cmd = _place(_oid(o + 1, p)) if rng.random() < 0.6 else \
                Cancel("BTCUSDT", _oid(rng.randint(1, o + 1), p), 7, o)
            stream.append((cmd, _src(p, o)))
        cut = rng.randint(1, 59)
        written = stream[:cut] + stream[rng.randint(0, cut - 1):cut] + stream[cut:]
        f = DuplicateFilter()
        kept = []
        for cmd, hdrs in written:
            if f.check(cmd, hdrs) is True:
                kept.append(hdrs[0][1])
        assert kept == [h[0][1] for _, h in stream]


def test_headerless_records_and_other_headers_keep_the_place_rule_only():
    f = DuplicateFilter()
    for headers in (None, [], [("trace", b"3:1")], [("Keel-Source", b"3:1")]):
        assert f.check(_AMEND, headers) is True
        assert f.check(_AMEND, headers) is True                 # no header: not filtered
    assert f.check(_AMEND, [("trace", b"x"), ("keel-source", b"3:4"), ("y", None)]) is True
    assert f.check(_AMEND, [("keel-source", b"3:4"), ("trace", b"x")]) is False
    assert f.sources == {3: 4} and f.dropped == 1


def test_leading_zeros_read_as_the_same_numbers():
    f = DuplicateFilter()
    assert f.check(_AMEND, [("keel-source", b"0003:0042")]) is True
    assert f.check(_AMEND, _src(3, 42)) is False
    assert f.check(_AMEND, [("keel-source", b"3:043")]) is True
    assert f.sources == {3: 43}


@pytest.mark.parametrize("value, words", [
    (b"", "decimal digits"),
    (b"3", "decimal digits"),
    (b"3:", "decimal digits"),
    (b":5", "decimal digits"),
    (b"3:5:6", "decimal digits"),
    (b"a:1", "decimal digits"),
    (b"3:1a", "decimal digits"),
    (b" 3:1", "decimal digits"),
    (b"3:+1", "decimal digits"),
    (b"3:-1", "decimal digits"),
    (b"-3:1", "decimal digits"),
    (b"3:1_0", "decimal digits"),
    ("3:1".encode("utf-16"), "decimal digits"),
    ("3:\u0661".encode(), "decimal digits"),      # ARABIC-INDIC DIGIT ONE
    (b"4096:1", "below 4096"),
    (b"00000:1", "below 4096"),
    (b"9" * 5000 + b":1", "below 4096"),
    (b"3:" + b"9" * 19, "over 18 digits"),
    (b"3:" + b"1" * 5000, "over 18 digits"),
    (None, "no bytes value"),
])
def test_a_malformed_source_is_a_fault_with_the_reason(value, words):
    f = DuplicateFilter({3: _oid(1, 3)}, {3: 7})
    for cmd in (_AMEND, Cancel("BTCUSDT", _oid(1, 3), 7, 4), _CANCEL_ALL):
        verdict = f.check(cmd, [("keel-source", value)])
        assert type(verdict) is Fault
        assert verdict.code == ResultCode.INVALID_REQUEST and words in verdict.reason
    assert f.sources == {3: 7} and f.high == {3: _oid(1, 3)} and f.dropped == 0


@pytest.mark.parametrize("headers", [
    [("keel-source", b"3:x")], [("keel-source", b"4096:1")], [("keel-source", None)],
    [("keel-source", b"3:1"), ("keel-source", b"3:1")],
])
def test_a_place_with_a_malformed_source_meets_the_id_rule_only(headers):
    # Documented in engine.service.duplicates: a Place's header is not read, so it is not
    # dead-lettered either.
    f = DuplicateFilter({3: _oid(1, 3)}, {3: 7})
    assert f.check(_place(_oid(50, 3)), headers) is True
    assert f.check(_place(_oid(50, 3)), headers) is False
    assert f.sources == {3: 7} and f.high == {3: _oid(50, 3)} and f.dropped == 1


def test_two_source_headers_are_a_fault():
    verdict = DuplicateFilter().check(_AMEND, [("keel-source", b"3:1"), ("keel-source", b"3:1")])
    assert type(verdict) is Fault and "2 keel-source headers" in verdict.reason


def test_undecodable_headers_are_a_fault_not_a_crash():
    class Record:
        def headers(self):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    verdict = DuplicateFilter().admit(_AMEND, Record())
    assert type(verdict) is Fault and "undecodable record headers" in verdict.reason
    assert DuplicateFilter().admit(_place(_oid(1, 3)), Record()) is True


def test_the_inline_check_agrees_with_parse_source():
    rng = random.Random(7)
    alphabet = b"0123456789:- +a"
    for _ in range(20_000):
        value = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        want = parse_source(value)
        f = DuplicateFilter()
        got = f.check(_AMEND, [("keel-source", value)])
        if type(want) is str:
            assert got == Fault(int(ResultCode.INVALID_REQUEST), want), value
        else:
            assert got is True and f.sources == {want[0]: want[1]}, value


# ---- partition state ----

def test_state_round_trips_and_its_hash_covers_both_filters():
    data = _engine_bytes()
    high = [(3, _oid(1, 3)), (17, _oid(40, 17))]
    sources = [(3, 0), (17, 39), (4095, 2**63 - 1)]
    packed = pack_state(data, high, sources)
    assert packed.startswith(STATE_MAGIC) and packed[8:10] == b"\x02\x00"
    assert unpack_state(packed) == (data, dict(high), dict(sources))
    assert partition_hash(data, high, sources) == hashlib.sha256(packed).hexdigest()
    assert partition_hash(data, high, sources) != partition_hash(data, high, sources[:1])
    assert partition_hash(data, high, sources) != partition_hash(data, high[:1], sources)
    assert partition_hash(data, [], []) not in legacy_hashes(data, [])


def test_a_version_1_snapshot_restores_with_an_empty_source_map():
    data = _engine_bytes()
    high = [(3, _oid(1, 3))]
    v1 = pack_state(data, high, [(9, 9)], version=1)        # version 1 has no source map
    assert v1[8:10] == b"\x01\x00"
    assert unpack_state(v1) == (data, dict(high), {})
    assert legacy_hashes(data, high) == (hashlib.sha256(v1).hexdigest(),
                                         hashlib.sha256(data).hexdigest())


def test_a_snapshot_written_before_the_filters_restores_with_empty_ones():
    data = _engine_bytes()
    assert unpack_state(data) == (data, {}, {})


@pytest.mark.parametrize("damage, words", [
    (lambda p: b"NOPE" + p[4:], "neither"),
    (lambda p: p[:8] + struct.pack("<H", 3) + p[10:], "version 3"),
    (lambda p: p[:8] + struct.pack("<H", 0) + p[10:], "version 0"),
    (lambda p: p[:-1], "keel-source filter entries"),
    (lambda p: p[:-12], "keel-source filter entries"),
    (lambda p: p[:-16], "before its keel-source filter count"),
    (lambda p: p + b"\x00", "bytes after its last entry"),
    (lambda p: p[:20], "truncated"),
])
def test_damaged_state_is_refused_with_the_reason(damage, words):
    packed = pack_state(_engine_bytes(), [(3, _oid(1, 3))], [(3, 0)])
    with pytest.raises(SnapshotError, match=words):
        unpack_state(damage(packed))


@pytest.mark.parametrize("high, sources, what", [
    ([(5, _oid(1, 5)), (3, _oid(1, 3))], [], "Place filter"),      # not ascending
    ([(3, _oid(1, 4))], [], "Place filter"),                       # id not of its residue
    ([(ORDER_ID_STRIDE, 2 * ORDER_ID_STRIDE)], [], "Place filter"),
    ([], [(5, 1), (3, 1)], "keel-source filter"),                  # not ascending
    ([], [(3, 1), (3, 2)], "keel-source filter"),                  # twice
    ([], [(ORDER_ID_STRIDE, 1)], "keel-source filter"),            # partition out of range
    ([], [(3, -1)], "keel-source filter"),                         # negative offset
])
def test_a_filter_entry_that_cannot_be_right_is_refused(high, sources, what):
    with pytest.raises(SnapshotError, match=f"{what} entry .* out of order or out of range"):
        unpack_state(pack_state(_engine_bytes(), high, sources))
