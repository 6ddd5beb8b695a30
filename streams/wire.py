"""accounts' three output values per order, written straight to Avro bytes.

Profiled on the accounts worker (py-spy, bench/streams.py --only accounts and --only
latency), fastavro's generic writer (a schema walk per record) was the largest single
cost of handling a request: 11-13% of the worker's CPU for the three records an accepted
order emits (its Place on keel.orders, its Reply, its Balance). Each is a handful of
strings and zigzag varints, so they are written here, as gateway/place_record.py does
for the request itself.

The bytes must be exactly the codec's: `Wire` checks each writer against `Codec.encode`
when built (and takes the codec's framing header from that check, so registry framing
works too); a writer whose bytes differ is not used, and that record goes through the
codec as before. Commands other than Place (cancels, amends) always go through the codec.
"""
from __future__ import annotations

from engine.domain import Place
from schemas.codec import COMMANDS, Codec
from schemas.records import command_to_record
from schemas.varint import framing as _header
from schemas.varint import string, zigzag

_STRINGS: dict[str, bytes] = {}     # pair and asset names
_NULL = b"\x00"                     # a ["null", X] union's first branch
_SOME = b"\x02"                     # ... and its second, X
_PLACE = b"\x00"                    # Place, the command union's first branch
_EMPTY = b"\x00"                    # "" (length 0): an accepted request's message


def _interned(text: str) -> bytes:
    """A pair or asset name (a few distinct values)."""
    out = _STRINGS.get(text)
    if out is None:
        out = _STRINGS[text] = string(text)
    return out


def _opt_string(text: str | None) -> bytes:
    return _NULL if text is None else _SOME + string(text)


def _opt_long(n: int | None) -> bytes:
    return _NULL if n is None else _SOME + zigzag(n)


def place_body(cmd: Place, request_id: str | None) -> bytes:
    return b"".join((
        _NULL if request_id is None else _SOME + string(request_id), _PLACE,
        _interned(cmd.pair), zigzag(cmd.order_id), zigzag(cmd.user_id), zigzag(cmd.side),
        zigzag(cmd.kind), zigzag(cmd.tif), zigzag(cmd.price), zigzag(cmd.qty),
        zigzag(cmd.quote_qty), zigzag(cmd.stp), zigzag(cmd.ts)))


def reply_body(r: dict) -> bytes:
    pair = r["pair"]
    return b"".join((
        string(r["request_id"]), zigzag(r["user_id"]), zigzag(r["ts"]), zigzag(r["code"]),
        string(r["message"]) if r["message"] else _EMPTY,
        _NULL if pair is None else _SOME + _interned(pair),
        _opt_long(r["order_id"]), _opt_string(r["client_order_id"])))


def balance_body(b: dict) -> bytes:
    return b"".join((
        zigzag(b["user_id"]), _interned(b["asset"]), zigzag(b["available"]),
        zigzag(b["held"]), zigzag(b["version"]), zigzag(b["ts"])))


_PLACE_SAMPLE = (Place("BTCUSDT", 2**45 + 3, 7, 1, 0, 2, 3_000_000, -5, 2**40, 3,
                       1_700_000_000_000), "é-request")
_REPLY_SAMPLES = (
    {"request_id": "r-1", "user_id": 7, "ts": 1_700_000_000_000, "code": -2010,
     "message": "USDT available is below the 5 this order needs", "pair": "BTCUSDT",
     "order_id": 2**40, "client_order_id": "é-client"},
    {"request_id": "r-2", "user_id": 2**33, "ts": 1, "code": 0, "message": "",
     "pair": None, "order_id": None, "client_order_id": None},
)
_BALANCE_SAMPLE = {"user_id": 9, "asset": "BTC", "available": 10**16, "held": -3,
                   "version": 2**31, "ts": 1_700_000_000_000}


class Wire:
    """Encoders for accounts' outputs, each self-checked against `codec` (see above)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        cmd, rid = _PLACE_SAMPLE
        self.place = _header(codec.encode(COMMANDS, command_to_record(cmd, rid)),
                             place_body(cmd, rid))
        headers = {_header(codec.encode("reply", r), reply_body(r)) for r in _REPLY_SAMPLES}
        self.reply_header = headers.pop() if len(headers) == 1 else None
        self.balance_header = _header(codec.encode("balance", _BALANCE_SAMPLE),
                                      balance_body(_BALANCE_SAMPLE))

    def command(self, cmd, request_id: str | None) -> bytes:
        if self.place is not None and type(cmd) is Place:
            return self.place + place_body(cmd, request_id)
        return self.codec.encode_command(cmd, request_id)

    def reply(self, r: dict) -> bytes:
        if self.reply_header is None:
            return self.codec.encode("reply", r, validate=False)
        return self.reply_header + reply_body(r)

    def balance(self, b: dict) -> bytes:
        if self.balance_header is None:
            return self.codec.encode("balance", b, validate=False)
        return self.balance_header + balance_body(b)
