"""The engine's fast wire path gives the codec's exact bytes and results (pure, no Kafka).

Every test runs on the Python path and on the compiled one (engine/service/_wire.c),
which exists only where the extension was built."""
from __future__ import annotations

import random

import pytest

from engine.domain import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    CancelAll,
    Cancelled,
    Done,
    Expired,
    MarketStatus,
    Place,
    Rejected,
    SetTrading,
    Trade,
)
from engine.engine import Engine
from engine.markets import parse_markets
from engine.service import wire as wire_module
from engine.service.wire import FastWire, zz
from engine.workload import operations, to_commands
from schemas.codec import Codec, CodecError

CODEC = Codec()
BUILT = wire_module._compiled is not None
WIRES = [pytest.param(False, id="python"),
         pytest.param(True, id="compiled", marks=pytest.mark.skipif(
             not BUILT, reason="engine.service._wire not built (setup.py does not list it)"))]


@pytest.fixture(params=WIRES)
def wire(request) -> FastWire:
    w = FastWire(CODEC, compiled=request.param)
    assert (w.compiled is not None) == request.param
    return w

BIG = 2**63 - 1
EDGE = [0, 1, -1, 63, 64, -64, -65, 127, 128, 8191, 8192, 16383, 16384, 2**31, -2**31, BIG, -BIG - 1]


def test_zigzag_matches_avro_for_edge_values():
    from io import BytesIO

    from fastavro import schemaless_writer
    for n in EDGE:
        out = BytesIO()
        schemaless_writer(out, "long", n)
        assert zz(n) == out.getvalue(), n


EVENTS = [
    Accepted("BTCUSDT", 1, 5, 10, 11, 0, 1, 2, 0, 0, 500),
    Rejected("BTCUSDT", 2, -5, 0, 3, -3101),
    Trade("BTCUSDT", 3, 7, 1, BIG, 4, 1, 8, 9, 10, 11, 0, -BIG - 1),
    Cancelled("ETHUSDT", 4, 8, 1, 2, 3, 1),
    Amended("BTCUSDT", 5, 9, 1, 2, 3, 4, True),
    Amended("BTCUSDT", 6, 9, 1, 2, 3, 4, False),
    Expired("BTCUSDT", 7, 9, 1, 2, 16384, 4),
    Done("BTCUSDT", 8, 9, 1, 2),
    MarketStatus("BTCUSDT", 9, 10, False),
    MarketStatus("BTCUSDT", 10, 10, True),
]


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_type_encodes_byte_identically(wire, ev):
    assert wire.encode_event(ev) == CODEC.encode_event(ev)


def test_event_records_are_the_encoded_events_with_the_key(wire):
    assert wire.event_records(EVENTS, b"K") == [
        {"value": CODEC.encode_event(ev), "key": b"K"} for ev in EVENTS]
    assert wire.event_records([], b"K") == []


def test_a_workload_encodes_and_decodes_exactly_like_the_codec(wire):
    markets = parse_markets({
        "assets": {"B": {"decimals": 8}, "Q": {"decimals": 8}},
        "markets": [{"pair": "BQ", "base": "B", "quote": "Q", "tick_size": "0.01",
                     "lot_size": "0.001", "maker_fee": "0.001", "taker_fee": "0.002",
                     "partition": 0}]})
    engine = Engine(markets)
    commands = list(to_commands(operations(5_000, seed=3), "BQ"))
    commands += [Amend("BQ", 1, 2, 3, 4, 5), CancelAll("BQ", 3, 4), SetTrading("BQ", False, 7),
                 SetTrading("BQ", True, -7), Cancel("BQ", BIG, -1, 0),
                 Place("BQ", -1, 2**62, 1, 2, 2, -5, 0, 10**12, 3, -1)]
    for i, cmd in enumerate(commands):
        data = CODEC.encode_command(cmd, None if i % 3 else f"req-{i}")
        got, want = wire.decode_command(data), CODEC.decode_command(data)
        assert got == want and type(got[0]) is type(want[0])
        assert [type(v) for v in got[0]] == [type(v) for v in want[0]]
        for ev in engine.apply(cmd):
            assert wire.encode_event(ev) == CODEC.encode_event(ev)


@pytest.mark.parametrize("data", [
    b"", b"\x00\x01", b"junk" * 5,
    CODEC.encode_command(Cancel("BQ", 1, 2, 3))[:-1],
    CODEC.encode_command(Cancel("BQ", 1, 2, 3)) + b"\x00",
    CODEC.encode_command(Cancel("BQ", 1, 2, 3))[:10] + b"\x00\x0a\x04BQ",
])
def test_bad_bytes_raise_the_codecs_error(wire, data):
    with pytest.raises(CodecError) as fast:
        wire.decode_command(data)
    with pytest.raises(CodecError) as slow:
        CODEC.decode_command(data)
    assert fast.value.code == slow.value.code


def test_an_oversized_varint_gets_the_codecs_answer(wire):
    good = CODEC.encode_command(Place("BQ", 1, 2, 0, 0, 0, 10, 1, 0, 0, 5))
    # Replace order_id (the byte after the pair) with a 10-byte varint beyond 64 bits.
    head = good.index(b"BQ") + 2
    data = good[:head] + b"\xff" * 9 + b"\x7f" + good[head + 1:]
    try:
        want = CODEC.decode_command(data)
    except CodecError as exc:
        with pytest.raises(CodecError) as fast:
            wire.decode_command(data)
        assert fast.value.code == exc.code
    else:
        assert wire.decode_command(data) == want
        assert -2**63 <= want[0].order_id < 2**63


def _same_answer(wire: FastWire, data: bytes) -> None:
    try:
        want = CODEC.decode_command(data)
    except CodecError as exc:
        with pytest.raises(CodecError) as fast:
            wire.decode_command(data)
        assert fast.value.code == exc.code, data.hex()
    else:
        got = wire.decode_command(data)
        assert got == want and type(got[0]) is type(want[0]), data.hex()


def test_invalid_utf8_and_other_writers_get_the_codecs_answer(wire):
    good = CODEC.encode_command(Cancel("BQ", 1, 2, 3), "rid")
    pair_at, rid_at = good.index(b"BQ"), good.index(b"rid")
    for data in (good[:pair_at] + b"\xff\xfe" + good[pair_at + 2:],
                 good[:rid_at] + b"\xc3(d" + good[rid_at + 3:],
                 b"\xc3\x01" + bytes(8) + good[10:]):       # another writer's fingerprint
        _same_answer(wire, data)


def test_damaged_commands_get_the_codecs_answer(wire):
    """Random byte flips, cuts and insertions in valid commands: the fast path gives what
    the codec gives, result or error code, every time."""
    rng = random.Random(5)
    commands = list(to_commands(operations(300, seed=9), "BQ")) + [
        Amend("BQ", 1, 2, 3, 4, 5), CancelAll("BQ", 3, 4), SetTrading("BQ", True, 7)]
    for i in range(3_000):
        data = bytearray(CODEC.encode_command(rng.choice(commands), None if i % 2 else "r1"))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(10, len(data))           # keep the header: reach the walk
            op = rng.random()
            if op < 0.6:
                data[at] = rng.randrange(256)
            elif op < 0.8:
                del data[at:]
            else:
                data.insert(at, rng.randrange(256))
            if len(data) <= 10:
                break
        _same_answer(wire, bytes(data))
