"""The engine's fast wire path gives the codec's exact bytes and results (pure, no Kafka)."""
from __future__ import annotations

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
from engine.service.wire import FastWire, zz
from engine.workload import operations, to_commands
from schemas.codec import Codec, CodecError

CODEC = Codec()
WIRE = FastWire(CODEC)
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
def test_every_event_type_encodes_byte_identically(ev):
    assert WIRE.encode_event(ev) == CODEC.encode_event(ev)


def test_a_workload_encodes_and_decodes_exactly_like_the_codec():
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
        got, want = WIRE.decode_command(data), CODEC.decode_command(data)
        assert got == want and type(got[0]) is type(want[0])
        for ev in engine.apply(cmd):
            assert WIRE.encode_event(ev) == CODEC.encode_event(ev)


@pytest.mark.parametrize("data", [
    b"", b"\x00\x01", b"junk" * 5,
    CODEC.encode_command(Cancel("BQ", 1, 2, 3))[:-1],
    CODEC.encode_command(Cancel("BQ", 1, 2, 3)) + b"\x00",
    CODEC.encode_command(Cancel("BQ", 1, 2, 3))[:10] + b"\x00\x0a\x04BQ",
])
def test_bad_bytes_raise_the_codecs_error(data):
    with pytest.raises(CodecError) as fast:
        WIRE.decode_command(data)
    with pytest.raises(CodecError) as slow:
        CODEC.decode_command(data)
    assert fast.value.code == slow.value.code


def test_an_oversized_varint_gets_the_codecs_answer():
    good = CODEC.encode_command(Place("BQ", 1, 2, 0, 0, 0, 10, 1, 0, 0, 5))
    # Replace order_id (the byte after the pair) with a 10-byte varint beyond 64 bits.
    head = good.index(b"BQ") + 2
    data = good[:head] + b"\xff" * 9 + b"\x7f" + good[head + 1:]
    try:
        want = CODEC.decode_command(data)
    except CodecError as exc:
        with pytest.raises(CodecError) as fast:
            WIRE.decode_command(data)
        assert fast.value.code == exc.code
    else:
        assert WIRE.decode_command(data) == want
        assert -2**63 <= want[0].order_id < 2**63
