"""Codec round trips, single-object framing, and every way bytes can be wrong."""
from __future__ import annotations

import io

import avro.io
import avro.schema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import EVENT_TYPES, Amended, MarketStatus, Trade

# Submodules, not `from schemas import ...`: pytest's default "prepend" import mode
# puts tests/ first on sys.path, so the bare name `schemas` is this test package.
from schemas.catalog import SCHEMA_DIR, default_catalog, fingerprint64
from schemas.codec import Codec
from schemas.errors import CodecError, CodecFault
from schemas.records import command_to_record, event_to_record, record_to_command, record_to_event

from .samples import COMMANDS, EVENTS, RECORDS

CODEC = Codec()


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip_every_schema(name):
    assert RECORDS[name], f"no sample records for {name}"
    for record in RECORDS[name]:
        data = CODEC.encode(name, record)
        assert CODEC.decode(name, data) == record
        assert CODEC.decode_any(data) == (name, record)


def test_samples_cover_every_event_and_command_type():
    assert {type(e) for e in EVENTS} == set(EVENT_TYPES)
    assert len({type(c) for c, _ in COMMANDS}) == 5


def test_event_round_trip_is_exact():
    for event in EVENTS:
        data = CODEC.encode_event(event)
        back = CODEC.decode_event(data)
        assert back == event and type(back) is type(event)
        assert [type(v) for v in back] == [type(v) for v in event]   # bools stay bools
        assert record_to_event(event_to_record(event)) == event


def test_cancelled_and_expired_keep_their_identity():
    # Identical field sets: only the union branch name tells them apart.
    cancelled, expired = EVENTS[5], EVENTS[8]
    assert type(CODEC.decode_event(CODEC.encode_event(cancelled))).__name__ == "Cancelled"
    assert type(CODEC.decode_event(CODEC.encode_event(expired))).__name__ == "Expired"


def test_command_round_trip_is_exact():
    for command, request_id in COMMANDS:
        assert CODEC.decode_command(CODEC.encode_command(command, request_id)) == (
            command, request_id)
        assert record_to_command(command_to_record(command, request_id)) == command


_i64 = st.integers(-(2**63), 2**63 - 1)
_i32 = st.integers(-(2**31), 2**31 - 1)


@given(pair=st.text(min_size=1, max_size=12), nums=st.lists(_i64, min_size=10, max_size=10),
       side=_i32, flag=st.booleans())
def test_event_round_trip_any_values(pair, nums, side, flag):
    for event in (Trade(pair, *nums[:5], side, *nums[5:], nums[0]),
                  Amended(pair, *nums[:6], flag), MarketStatus(pair, nums[0], nums[1], flag)):
        assert CODEC.decode_event(CODEC.encode_event(event)) == event


def test_single_object_framing():
    event = EVENTS[3]
    data = CODEC.encode_event(event)
    current = default_catalog().current["engine_event"]
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == current.fingerprint
    # The body is plain Avro binary: the reference implementation reads it.
    reader = avro.io.DatumReader(avro.schema.parse((SCHEMA_DIR / "engine_event.avsc").read_text()))
    decoded = reader.read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
    assert decoded["seq"] == event.seq and decoded["event"]["maker_fee"] == event.maker_fee


def test_fingerprint_matches_avro_spec_vector():
    # CRC-64-AVRO of "int" from the Avro spec's test data, little-endian on the wire.
    assert fingerprint64("int") == (8247732601305521295).to_bytes(8, "little")


def _fault(data, name="engine_event"):
    with pytest.raises(CodecError) as info:
        CODEC.decode(name, data)
    return info.value


def test_error_empty_and_bad_marker():
    assert _fault(b"").fault is CodecFault.TRUNCATED
    err = _fault(b"{\"pair\": \"BTCUSDT\"}")
    assert err.fault is CodecFault.BAD_FRAMING and err.code == -1201
    assert "7b22" in err.reason
    assert _fault(b"\xc3\x02" + bytes(20)).fault is CodecFault.BAD_FRAMING


def test_error_truncated_header_and_body():
    data = CODEC.encode_event(EVENTS[3])
    assert _fault(data[:1]).fault is CodecFault.TRUNCATED
    assert _fault(data[:6]).fault is CodecFault.TRUNCATED
    for cut in range(10, len(data)):
        err = _fault(data[:cut])
        assert err.fault in (CodecFault.TRUNCATED, CodecFault.MALFORMED), cut
    assert _fault(data[:10]).fault is CodecFault.TRUNCATED


def test_error_unknown_fingerprint_and_wrong_schema():
    data = CODEC.encode_event(EVENTS[0])
    err = _fault(data[:2] + b"\x01" * 8 + data[10:])
    assert err.fault is CodecFault.UNKNOWN_SCHEMA and "0101010101010101" in err.reason
    ticker = CODEC.encode("ticker", RECORDS["ticker"][0])
    err = _fault(ticker)
    assert err.fault is CodecFault.WRONG_SCHEMA and "ticker v2" in err.reason


def test_error_trailing_bytes_and_bad_union_branch():
    data = CODEC.encode_event(EVENTS[4])
    assert _fault(data + b"\x00").fault is CodecFault.MALFORMED
    # The union index sits right after pair, seq and ts; 0x7e is branch 63 of 8.
    pair_len = 1 + len(EVENTS[4].pair)
    head = 10 + pair_len
    body = bytearray(data)
    i = head
    for _ in range(2):                      # skip the seq and ts varints
        while body[i] & 0x80:
            i += 1
        i += 1
    body[i] = 0x7E
    err = _fault(bytes(body))
    assert err.fault is CodecFault.MALFORMED


def test_error_not_bytes():
    assert _fault(None).fault is CodecFault.BAD_FRAMING
    with pytest.raises(KeyError, match="no schema named"):
        CODEC.decode("nope", b"\xc3\x01")


def test_registry_framing_without_registry_is_refused():
    err = _fault(b"\x00\x00\x00\x00\x07" + b"\x02")
    assert err.fault is CodecFault.UNKNOWN_SCHEMA and "no schema registry" in err.reason


def test_encode_refuses_floats_and_missing_fields():
    record = dict(RECORDS["balance"][0], available=12.5)
    with pytest.raises(CodecError) as info:
        CODEC.encode("balance", record)
    assert info.value.fault is CodecFault.INVALID_RECORD and "available" in info.value.reason
    with pytest.raises(CodecError, match="INVALID_RECORD"):
        CODEC.encode("balance", {"user_id": 1}, validate=False)
    # Without validation a float would be truncated silently: that is why it is the default.
    unchecked = Codec(validate=False)
    assert unchecked.decode("balance", unchecked.encode("balance", record))["available"] == 12


def test_decode_any_names_the_schema():
    data = CODEC.encode("candle", RECORDS["candle"][0])
    assert CODEC.decode_any(data)[0] == "candle"
    with pytest.raises(CodecError) as info:
        CODEC.decode_any(b"\xc3\x01" + bytes(8))
    assert info.value.fault is CodecFault.UNKNOWN_SCHEMA
