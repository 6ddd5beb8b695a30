"""Realistic records for every schema, covering every union branch and both null/non-null."""
from __future__ import annotations

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
    ResultCode,
    SetTrading,
    Trade,
)

TS = 1_717_000_000_123
BIG = 2**63 - 1

EVENTS = [
    Accepted("BTCUSDT", 1, TS, 101, 7, 0, 0, 0, 6_500_000, 3, 0),
    Accepted("BTCUSDT", 2, TS, 102, 8, 1, 1, 1, 0, 0, 9_000_000),
    Rejected("BTCUSDT", 3, TS, 103, 7, int(ResultCode.FOK_NOT_FILLABLE)),
    Trade("BTCUSDT", 4, TS, 1, 6_500_000, 3, 1, 101, 7, 102, 8, 20, 40),
    Done("BTCUSDT", 5, TS, 101, 7),
    Cancelled("ETHUSDT", 9, TS + 1, 201, 9, 4, 1),
    Amended("ETHUSDT", 10, TS + 2, 202, 9, 310_000, 12, True),
    Amended("ETHUSDT", 11, TS + 2, 202, 9, 310_001, 13, False),
    Expired("ETHUSDT", 12, TS + 3, 203, 9, 5, 4),
    MarketStatus("ETHUSDT", 13, TS + 4, False),
    Trade("X", BIG, BIG, BIG, BIG, BIG, 0, -BIG, BIG, BIG, BIG, BIG, BIG),
]

COMMANDS = [
    (Place("BTCUSDT", 101, 7, 0, 0, 0, 6_500_000, 3, 0, 0, TS), "req-1"),
    (Place("BTCUSDT", 102, 8, 1, 1, 1, 0, 0, 9_000_000, 3, TS), "req-2"),
    (Cancel("BTCUSDT", 101, 7, TS), "req-3"),
    (Amend("BTCUSDT", 101, 7, 6_400_000, 2, TS), "req-4"),
    (CancelAll("BTCUSDT", 7, TS), "req-5"),
    (SetTrading("BTCUSDT", False, TS), None),
]


def _request(body: tuple) -> dict:
    return {"request_id": "gw1-000042", "user_id": 7, "ts": TS, "body": body}


RECORDS: dict[str, list[dict]] = {
    "order_request": [
        _request(("keel.PlaceOrder", {"pair": "BTCUSDT", "side": 0, "kind": 0, "tif": 0,
                                      "price": 6_500_000, "qty": 3, "quote_qty": 0, "stp": 1,
                                      "client_order_id": "my-order-1"})),
        _request(("keel.PlaceOrder", {"pair": "BTCUSDT", "side": 1, "kind": 1, "tif": 1,
                                      "price": 0, "qty": 0, "quote_qty": 500, "stp": 0,
                                      "client_order_id": None})),
        _request(("keel.CancelOrder", {"pair": "BTCUSDT", "order_id": 101,
                                       "client_order_id": None})),
        _request(("keel.CancelOrder", {"pair": "BTCUSDT", "order_id": None,
                                       "client_order_id": "my-order-1"})),
        _request(("keel.CancelAllOrders", {"pair": "BTCUSDT"})),
        _request(("keel.AmendOrder", {"pair": "BTCUSDT", "order_id": 101, "client_order_id": None,
                                      "new_price": 6_400_000, "new_qty": 2})),
        _request(("keel.Deposit", {"asset": "USDT", "amount": 1_000_000_000,
                                   "reference": "0xabc"})),
        _request(("keel.Withdraw", {"asset": "BTC", "amount": 50_000, "destination": None})),
        _request(("keel.WithdrawalResult", {"withdrawal_request_id": "gw1-000040", "asset": "BTC",
                                            "amount": 50_000, "completed": False,
                                            "reference": None})),
    ],
    "reply": [
        {"request_id": "gw1-000042", "user_id": 7, "ts": TS, "code": 0, "message": "",
         "pair": "BTCUSDT", "order_id": 101, "client_order_id": "my-order-1"},
        {"request_id": "gw1-000043", "user_id": 7, "ts": TS,
         "code": int(ResultCode.INSUFFICIENT_BALANCE), "message": "insufficient USDT balance",
         "pair": None, "order_id": None, "client_order_id": None},
    ],
    "order_command": [],   # filled below from COMMANDS
    "engine_event": [],    # filled below from EVENTS
    "depth_update": [
        {"pair": "BTCUSDT", "first_update_id": 40, "last_update_id": 40, "ts": TS,
         "is_snapshot": True,
         "bids": [{"price": 6_500_000, "qty": 3}, {"price": 6_499_999, "qty": 10}],
         "asks": [{"price": 6_500_001, "qty": 1}]},
        {"pair": "BTCUSDT", "first_update_id": 41, "last_update_id": 44, "ts": TS + 5,
         "is_snapshot": False, "bids": [{"price": 6_500_000, "qty": 0}], "asks": []},
    ],
    "settlement": [
        {"user_id": 8, "pair": "BTCUSDT", "seq": 4, "ts": TS, "reason": 0, "order_id": 102,
         "trade_id": 1, "entries": [
             {"asset": "BTC", "available_delta": 0, "held_delta": -300},
             {"asset": "USDT", "available_delta": 19_499_960, "held_delta": 0}]},
        {"user_id": 7, "pair": "BTCUSDT", "seq": 5, "ts": TS, "reason": 1, "order_id": 101,
         "trade_id": None, "entries": [{"asset": "USDT", "available_delta": 12,
                                        "held_delta": -12}]},
    ],
    "balance": [
        {"user_id": 7, "asset": "USDT", "available": 980_000_000, "held": 19_500_000,
         "version": 12, "ts": TS},
    ],
    "ticker": [
        {"pair": "BTCUSDT", "ts": TS, "window_ms": 86_400_000, "open_time": TS - 86_400_000,
         "last_price": 6_500_000, "last_qty": 3, "best_bid_price": 6_499_999,
         "best_bid_qty": 10, "best_ask_price": 6_500_001, "best_ask_qty": 1,
         "open_price": 6_400_000, "high_price": 6_600_000, "low_price": 6_300_000,
         "price_change": 100_000, "price_change_bp": 156, "base_volume": 1_234,
         "quote_volume": 8_000_000_000, "trade_count": 77, "first_trade_id": 1,
         "last_trade_id": 77},
        {"pair": "ETHUSDT", "ts": TS, "window_ms": 86_400_000, "open_time": TS - 86_400_000,
         "last_price": None, "last_qty": None, "best_bid_price": None, "best_bid_qty": None,
         "best_ask_price": None, "best_ask_qty": None, "open_price": None, "high_price": None,
         "low_price": None, "price_change": 0, "price_change_bp": 0, "base_volume": 0,
         "quote_volume": 0, "trade_count": 0, "first_trade_id": None, "last_trade_id": None},
    ],
    "candle": [
        {"pair": "BTCUSDT", "interval": "1m", "open_time": 1_716_999_960_000,
         "close_time": 1_717_000_020_000, "open": 6_400_000, "high": 6_600_000,
         "low": 6_300_000, "close": 6_500_000, "base_volume": 12, "quote_volume": 78_000_000,
         "trade_count": 4, "closed": False},
    ],
    "engine_snapshot": [
        {"partition": 3, "input_offset": 1_000_001, "snapshot": b"KEEL\x01\x00\x00\x00\x00\x00",
         "state_hash": "ab" * 32, "created_ts": TS},
    ],
    "dead_letter": [
        {"source_topic": "keel.requests", "partition": 2, "offset": 99, "key": b"7",
         "value": b"\xc3\x01garbage", "reason": "BAD_FRAMING: ...", "error_code": -1201,
         "consumer": "accounts", "ts": TS},
        {"source_topic": "keel.events", "partition": 0, "offset": 0, "key": None, "value": None,
         "reason": "tombstone", "error_code": -1204, "consumer": None, "ts": TS},
    ],
}


def _fill() -> None:
    from schemas.records import command_to_record, event_to_record

    RECORDS["engine_event"] = [event_to_record(e) for e in EVENTS]
    RECORDS["order_command"] = [command_to_record(c, r) for c, r in COMMANDS]


_fill()
