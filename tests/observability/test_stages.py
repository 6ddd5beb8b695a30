"""The stage clock reads `ts` from the first fields of each record on the order path;
here against records the real codec writes, for every command and event kind."""
from __future__ import annotations

from engine import domain
from infra.loadgen.stages import event_ts, place_ts, request_ts
from schemas.codec import Codec

TS = 1_795_334_083_001


def test_request_ts_of_an_order_request():
    codec = Codec()
    place = ("keel.PlaceOrder", {"pair": "BTCUSDT", "side": 0, "kind": 0, "tif": 0,
                                 "price": 3_000_000, "qty": 5, "quote_qty": 0, "stp": 0,
                                 "client_order_id": "m1x1"})
    for user in (1, 2**40):
        value = codec.encode("order_request", {"request_id": "ab" * 16, "user_id": user,
                                               "ts": TS, "body": place})
        assert request_ts(value) == TS


def test_place_ts_of_commands():
    codec = Codec()
    place = domain.Place("ETHUSDT", 123_456_789, 77, 1, 0, 1, 200_000, 1, 0, 0, TS)
    for request_id in ("r" * 32, None):
        assert place_ts(codec.encode_command(place, request_id)) == TS
    # Only a Place carries the order path's clock here; other commands are passed over.
    cancel = domain.Cancel("ETHUSDT", 123_456_789, 77, TS)
    assert place_ts(codec.encode_command(cancel, "r" * 32)) is None


def test_event_ts_of_events():
    codec = Codec()
    accepted = domain.Accepted("SOLUSDT", 2**33, TS, 9, 8, 0, 0, 0, 2000, 3, 0)
    assert event_ts(codec.encode_event(accepted)) == TS
    assert codec.decode_event(codec.encode_event(accepted)).ts == TS
