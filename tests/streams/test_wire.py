"""streams.wire writes exactly the codec's bytes for accounts' outputs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain import Cancel, Place
from schemas.codec import Codec
from streams.wire import Wire

LONG = st.integers(-(2**63), 2**63 - 1)
INT = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(max_size=80)
codec = Codec()
wire = Wire(codec)


def test_every_writer_matched_the_codec_when_built():
    assert wire.place is not None
    assert wire.reply_header is not None
    assert wire.balance_header is not None


@settings(max_examples=300)
@given(st.builds(Place, st.sampled_from(["BTCUSDT", "ETHUSDT", "é" * 70]), LONG, LONG, INT,
                 INT, INT, LONG, LONG, LONG, INT, LONG), st.none() | TEXT)
def test_place(cmd, request_id):
    assert wire.command(cmd, request_id) == codec.encode_command(cmd, request_id)
    assert codec.decode_command(wire.command(cmd, request_id)) == (cmd, request_id)


def test_other_commands_go_through_the_codec():
    cmd = Cancel("BTCUSDT", 5, 7, 1_700_000_000_000)
    assert wire.command(cmd, "r") == codec.encode_command(cmd, "r")


@settings(max_examples=300)
@given(st.fixed_dictionaries({
    "request_id": TEXT, "user_id": LONG, "ts": LONG, "code": INT, "message": TEXT,
    "pair": st.none() | st.sampled_from(["BTCUSDT", "SOLUSDT", "x" * 100]),
    "order_id": st.none() | LONG, "client_order_id": st.none() | TEXT}))
def test_reply(reply):
    assert wire.reply(reply) == codec.encode("reply", reply)


@settings(max_examples=300)
@given(st.fixed_dictionaries({
    "user_id": LONG, "asset": st.sampled_from(["BTC", "USDT", "é" * 40]), "available": LONG,
    "held": LONG, "version": LONG, "ts": LONG}))
def test_balance(balance):
    assert wire.balance(balance) == codec.encode("balance", balance)
