"""keel.requests values for new orders, written straight to Avro bytes.

A new order is the gateway's hot path, and fastavro's generic writer (a schema walk per
record) cost as much as the rest of the order's encoding. An OrderRequest whose body is
a PlaceOrder is a handful of strings and zigzag varints, so it is written here. The
bytes must be exactly the codec's: `PlaceRecordWriter` checks itself against
`Codec.encode` when built (and takes the codec's framing header from that check, so the
registry's framing works too); if they ever differ it falls back to the codec.
"""
from __future__ import annotations

from schemas.codec import Codec
from schemas.varint import framing, string, zigzag

SCHEMA = "order_request"
PLACE_BRANCH = b"\x00"           # PlaceOrder is the body union's first branch
_PAIRS: dict[str, bytes] = {}


def place_body(request_id: str, user_id: int, ts: int, order: dict) -> bytes:
    """The Avro body (no framing) of an OrderRequest carrying `order`, a PlaceOrder dict."""
    pair = order["pair"]
    pair_bytes = _PAIRS.get(pair)
    if pair_bytes is None:
        pair_bytes = _PAIRS[pair] = string(pair)
    cid = order["client_order_id"]
    return b"".join((
        string(request_id), zigzag(user_id), zigzag(ts), PLACE_BRANCH, pair_bytes,
        zigzag(order["side"]), zigzag(order["kind"]), zigzag(order["tif"]),
        zigzag(order["price"]), zigzag(order["qty"]), zigzag(order["quote_qty"]),
        zigzag(order["stp"]), b"\x00" if cid is None else b"\x02" + string(cid)))


_SAMPLE = ("sample-1", 7, 1_700_000_000_000, {
    "pair": "BTCUSDT", "side": 1, "kind": 0, "tif": 2, "price": 3_000_000, "qty": -5,
    "quote_qty": 2**40, "stp": 3, "client_order_id": "é-client"})


class PlaceRecordWriter:
    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        request_id, user_id, ts, order = _SAMPLE
        want = codec.encode(SCHEMA, {"request_id": request_id, "user_id": user_id, "ts": ts,
                                     "body": ("keel.PlaceOrder", order)})
        # None: the schema moved on and this writer no longer matches it; use the codec.
        self.header = framing(want, place_body(request_id, user_id, ts, order))

    def encode(self, request_id: str, user_id: int, ts: int, order: dict) -> bytes:
        if self.header is None:
            return self.codec.encode(SCHEMA, {"request_id": request_id, "user_id": user_id,
                                              "ts": ts, "body": ("keel.PlaceOrder", order)})
        return self.header + place_body(request_id, user_id, ts, order)
