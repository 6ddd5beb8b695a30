"""streams.wire writes exactly the codec's bytes for accounts' outputs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain import Cancel, Place
from schemas.codec import Codec, CodecError
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


PLACE_ORDER = st.fixed_dictionaries({
    "pair": st.sampled_from(["BTCUSDT", "ETHUSDT", "é" * 40, "x" * 64]), "side": INT,
    "kind": INT, "tif": INT, "price": LONG, "qty": LONG, "quote_qty": LONG, "stp": INT,
    "client_order_id": st.none() | TEXT})
REQUEST = st.fixed_dictionaries({
    "request_id": TEXT, "user_id": LONG, "ts": LONG,
    "body": st.tuples(st.just("keel.PlaceOrder"), PLACE_ORDER)})


def test_the_request_reader_matched_the_codec_when_built():
    assert wire.request_header is not None


@settings(max_examples=500)
@given(REQUEST)
def test_a_new_order_reads_as_the_codec_reads_it(request):
    data = codec.encode("order_request", request)
    assert wire.request(data) == codec.decode("order_request", data) == request


def _decoded(fn, data):
    try:
        return fn(data)
    except CodecError as exc:
        return ("error", exc.code)


@settings(max_examples=800)
@given(REQUEST, st.integers(0, 200), st.integers(0, 255), st.sampled_from("cut set add"))
def test_damaged_bytes_read_as_the_codec_reads_them(request, at, byte, how):
    """A byte changed, the record cut short or a byte more: the same record or the same
    error."""
    data = bytearray(codec.encode("order_request", request))
    if how == "cut":
        del data[at % len(data):]
    elif how == "set":
        data[at % len(data)] = byte
    else:
        data.insert(at % (len(data) + 1), byte)
    data = bytes(data)
    assert _decoded(wire.request, data) == _decoded(
        lambda d: codec.decode("order_request", d), data)


def test_other_requests_go_through_the_codec():
    request = {"request_id": "c", "user_id": 3, "ts": 5, "body": (
        "keel.CancelOrder", {"pair": "BTCUSDT", "order_id": 9, "client_order_id": None})}
    data = codec.encode("order_request", request)
    assert wire.request(data) == request
