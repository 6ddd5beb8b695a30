"""Pure pieces of the gateway: signing, timestamps, rate limiting, error mapping, the
local book, the vault and order-form parsing. No I/O."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from engine.domain import ResultCode
from engine.markets import load_markets
from gateway import auth, errors
from gateway.book import LocalBook
from gateway.order_form import parse_new_order
from gateway.params import Params
from gateway.ratelimit import Limits, RateLimiter
from gateway.render import fixed
from gateway.users import Principal
from gateway.vault import Vault, VaultError
from infra.settings import DEFAULT_MARKETS, Secret

SECRET = "s" * 64


def principal() -> Principal:
    return Principal(7, "standard", False, "k" * 64, Secret(SECRET))


def test_signature_over_exact_query_and_body():
    query = "symbol=BTCUSDT&side=BUY&timestamp=1"
    body = "quantity=1&price=10.50"
    sig = hmac.new(SECRET.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
    auth.check_signature(principal(), f"{query}&signature={sig}", body)
    auth.check_signature(principal(), query, f"{body}&signature={sig.upper()}")
    auth.check_signature(principal(), f"signature={sig}&{query}", body)
    # One changed byte, a reordered parameter, or another secret: refused with -1022.
    for q, b in ((query.replace("BUY", "BUX"), body), (query, "price=10.50&quantity=1"),
                 (query + "&x=1", body)):
        with pytest.raises(errors.ApiError) as exc:
            auth.check_signature(principal(), f"{q}&signature={sig}", b)
        assert exc.value.code == -1022
    with pytest.raises(errors.ApiError) as exc:
        auth.check_signature(principal(), query, body)
    assert exc.value.code == -1102


def test_signature_keeps_percent_encoding_exact():
    query = "newClientOrderId=a%2Fb&timestamp=1"
    sig = auth.sign(SECRET, query)
    auth.check_signature(principal(), f"{query}&signature={sig}", "")
    decoded = auth.sign(SECRET, "newClientOrderId=a/b&timestamp=1")
    with pytest.raises(errors.ApiError):
        auth.check_signature(principal(), f"{query}&signature={decoded}", "")


@pytest.mark.parametrize("ts,window,ok", [
    (10_000, None, True), (5_001, None, True), (4_999, None, False),
    (10_999, None, True), (11_000, None, False), (1_000, 9_000, True), (999, 9_000, False)])
def test_timestamp_window(ts, window, ok):
    q = f"timestamp={ts}" + (f"&recvWindow={window}" if window is not None else "")
    if ok:
        auth.check_timestamp(Params(q), now_ms=10_000)
    else:
        with pytest.raises(errors.ApiError) as exc:
            auth.check_timestamp(Params(q), now_ms=10_000)
        assert exc.value.code == -1021


def test_recv_window_bound_and_bad_timestamp():
    with pytest.raises(errors.ApiError) as exc:
        auth.check_timestamp(Params("timestamp=1&recvWindow=60001"), 1)
    assert exc.value.code == -1131
    with pytest.raises(errors.ApiError) as exc:
        auth.check_timestamp(Params("timestamp=abc"), 1)
    assert exc.value.code == -1100
    with pytest.raises(errors.ApiError) as exc:
        auth.check_timestamp(Params(""), 1)
    assert exc.value.code == -1102


def test_api_key_format():
    for bad in (None, "", "short", "x" * 63 + "!"):
        with pytest.raises(errors.ApiError) as exc:
            auth.check_api_key_format(bad)
        assert exc.value.code == -2014 and exc.value.status == 401


def test_rate_limit_sliding_window_and_retry_after():
    rl = RateLimiter(Limits(per_ip=10, standard=100, vip=1000, global_ceiling=10_000))
    assert rl.charge(100.0, "a", 6).allowed
    assert rl.charge(130.5, "a", 4).allowed
    v = rl.charge(131.0, "a", 1)
    assert not v.allowed and v.scope == "IP" and v.limit == 10
    assert v.retry_after == 29          # the weight of second 100 ages out at 160
    assert rl.charge(131.0, "b", 10).allowed, "another IP has its own window"
    assert rl.charge(160.0, "a", 6).allowed, "second 100 has left the window"
    assert not rl.charge(161.0, "a", 1).allowed


def test_rate_limit_tiers_and_global():
    rl = RateLimiter(Limits(per_ip=10**6, standard=5, vip=50, global_ceiling=60))
    assert rl.charge(0, "ip1", 5, "std", "standard").allowed
    v = rl.charge(0, "ip2", 1, "std", "standard")
    assert not v.allowed and v.scope == "API key" and v.limit == 5
    assert rl.charge(0, "ip2", 50, "vip", "vip").allowed
    v = rl.charge(0, "ip3", 6)
    assert not v.allowed and v.scope == "global"
    refused = rl.charge(0, "ip2", 1, "vip", "vip")
    assert not refused.allowed, "a refused request is not charged, the window stays full"


def test_result_codes_map_to_binance():
    cases = {
        ResultCode.INSUFFICIENT_BALANCE: (-2010, "Account has insufficient balance for requested action."),
        ResultCode.UNKNOWN_PAIR: (-1121, "Invalid symbol."),
        ResultCode.TICK_VIOLATION: (-1013, "Filter failure: PRICE_FILTER"),
        ResultCode.LOT_VIOLATION: (-1013, "Filter failure: LOT_SIZE"),
        ResultCode.BELOW_MIN_NOTIONAL: (-1013, "Filter failure: NOTIONAL"),
    }
    for rc, (code, msg) in cases.items():
        err = errors.from_result(rc)
        assert (err.code, err.msg, err.status) == (code, msg, 400)
    assert errors.from_result(ResultCode.UNKNOWN_ORDER, "cancel").code == -2011
    assert errors.from_result(ResultCode.UNKNOWN_ORDER, "query").code == -2013
    assert errors.from_result(ResultCode.NOT_ORDER_OWNER, "cancel").code == -2011
    assert errors.from_result(-9999).status == 400
    # every rejection a client can receive reads as words, never the bare enum name
    for rc in ResultCode:
        if rc is not ResultCode.OK:
            err = errors.from_result(rc)
            assert err.msg != rc.name and " " in err.msg, (rc, err.msg)
    assert errors.from_result(ResultCode.AMEND_WOULD_ENLARGE).code == -2010
    assert errors.too_many_requests(10, "IP", 7).headers == {"Retry-After": "7"}


def test_local_book_snapshot_diffs_and_gap():
    book = LocalBook("BTCUSDT")
    lv = lambda *pq: [{"price": p, "qty": q} for p, q in pq]  # noqa: E731
    diff = lambda a, b, bids=(), asks=(): {  # noqa: E731
        "pair": "BTCUSDT", "first_update_id": a, "last_update_id": b, "ts": 0,
        "is_snapshot": False, "bids": lv(*bids), "asks": lv(*asks)}
    assert not book.apply(diff(1, 2, [(100, 5)])), "no snapshot yet: diffs wait"
    assert book.apply({"pair": "BTCUSDT", "first_update_id": 5, "last_update_id": 5, "ts": 0,
                       "is_snapshot": True, "bids": lv((100, 5), (99, 1)), "asks": lv((101, 2))})
    assert not book.apply(diff(3, 5, [(100, 0)])), "already covered"
    assert book.apply(diff(6, 7, [(100, 0), (98, 4)], [(102, 3)]))
    assert book.depth(10) == ([(99, 1), (98, 4)], [(101, 2), (102, 3)])
    assert book.last_update_id == 7
    assert not book.apply(diff(9, 9, [(97, 1)])) and not book.synced, "a hole unsyncs"
    assert not book.apply(diff(10, 10, [(96, 1)]))
    assert book.apply({"pair": "BTCUSDT", "first_update_id": 10, "last_update_id": 10, "ts": 0,
                       "is_snapshot": True, "bids": lv((96, 1)), "asks": []})
    assert book.synced and book.depth(5) == ([(96, 1)], [])


def test_vault_round_trip_and_integrity():
    vault = Vault(b"m" * 32)
    box = vault.seal(SECRET)
    assert SECRET.encode() not in box
    assert vault.open(box).reveal() == SECRET
    assert "s" * 8 not in repr(vault.open(box))
    with pytest.raises(VaultError):
        Vault(b"n" * 32).open(box)
    tampered = bytearray(box)
    tampered[20] ^= 1
    with pytest.raises(VaultError):
        vault.open(bytes(tampered))


def test_fixed_point_rendering():
    assert fixed(12345, 2) == "123.45"
    assert fixed(5, 3) == "0.005"
    assert fixed(-150, 2) == "-1.50"
    assert fixed(7, 0) == "7"


def _order(q: str):
    return parse_new_order(Params(q), load_markets(DEFAULT_MARKETS))


def test_order_form_conversions_and_errors():
    o = _order("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=100.50&quantity=0.1")
    assert (o.price, o.qty, o.quote_qty, o.resp_type) == (10050, 10000, 0, "FULL")
    m = _order("symbol=BTCUSDT&side=SELL&type=MARKET&quoteOrderQty=10")
    assert m.qty == 0 and m.quote_qty == 10 * 10**7
    cases = {
        "symbol=NOPE&side=BUY&type=LIMIT": -1121,
        "symbol=BTCUSDT&side=UP&type=LIMIT": -1117,
        "symbol=BTCUSDT&side=BUY&type=STOP": -1116,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=XX&price=1&quantity=1": -1115,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&price=100&quantity=1": -1102,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=100.001&quantity=1": -1013,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=100&quantity=0.000001": -1013,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=1&quantity=0.001": -1013,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=1e5&quantity=1": -1100,
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=1&quoteOrderQty=10": -1102,
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=1&price=3": -1106,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=1&quantity=1&quantity=2": -1101,
    }
    for query, code in cases.items():
        with pytest.raises(errors.ApiError) as exc:
            _order(query)
        assert exc.value.code == code, query
        assert exc.value.status == 400


def test_market_protection_price_from_the_book():
    from gateway.order_form import protection_price

    buy = _order("symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.3")      # 30000 lots
    asks = [(100, 10000), (101, 10000), (105, 50000)]
    assert protection_price(buy, [], asks).price == 105
    assert protection_price(buy, [], asks[:2]).price == 101, "thin book: its worst level"
    with pytest.raises(errors.ApiError) as exc:
        protection_price(buy, [(99, 1)], [])
    assert exc.value.code == -2010
    sell = _order("symbol=BTCUSDT&side=SELL&type=MARKET&quoteOrderQty=10")  # 10**8 units
    bids = [(100, 500_000), (90, 1_000_000), (80, 1)]
    assert protection_price(sell, bids, []).price == 90
    limit = _order("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=7&quantity=1")
    assert protection_price(limit, [], asks) is limit


def test_listen_keys_are_verifiable_anywhere_and_expire():
    from gateway.listen_keys import LIFETIME_S, ListenKeys

    issuer, other = ListenKeys(b"m" * 32), ListenKeys(b"m" * 32)
    key = issuer.issue(1234, now_s=1000)
    assert other.owner(key, 1001) == 1234, "another instance with the same master accepts it"
    assert other.owner(key, 1000 + LIFETIME_S + 1) is None
    assert ListenKeys(b"n" * 32).owner(key, 1001) is None
    uid, exp, nonce, mac = key.split(".")
    assert other.owner(f"999.{exp}.{nonce}.{mac}", 1001) is None, "the user id is signed"
    assert other.owner("garbage", 1001) is None
    other.revoke(key, 1001)
    assert other.owner(key, 1002) is None and issuer.owner(key, 1002) == 1234


def test_depth_batches_merge_contiguously():
    from gateway.state import DepthBatches

    b = DepthBatches()
    lv = lambda *pq: [{"price": p, "qty": q} for p, q in pq]  # noqa: E731
    b.add("x@depth@100ms", {"pair": "X", "first_update_id": 5, "last_update_id": 6, "ts": 1,
                            "bids": lv((10, 1), (9, 2)), "asks": lv((11, 1))})
    b.add("x@depth@100ms", {"pair": "X", "first_update_id": 7, "last_update_id": 9, "ts": 2,
                            "bids": lv((10, 0)), "asks": lv((12, 3))})
    b.add("x@depth", {"pair": "X", "first_update_id": 7, "last_update_id": 9, "ts": 2,
                      "bids": [], "asks": []})
    [(stream, m)] = b.take("@100ms")
    assert stream == "x@depth@100ms"
    assert (m["first_update_id"], m["last_update_id"], m["ts"]) == (5, 9, 2)
    assert m["bids"] == lv((10, 0), (9, 2)) and m["asks"] == lv((11, 1), (12, 3))
    assert b.take("@100ms") == [] and [s for s, _ in b.take("@depth")] == ["x@depth"]


def test_bookkeeper_forgets_the_oldest_finished_orders_only():
    from engine.domain import Accepted, Cancelled, Done, Trade
    from gateway.orders import OrderBookkeeper

    book = OrderBookkeeper(finished_kept=3)
    seq = iter(range(1, 100))
    for oid in (1, 2, 3, 4):
        book.register("BTCUSDT", oid, 7, 0, client_order_id=f"c{oid}")
        book.apply_event(Accepted("BTCUSDT", next(seq), 0, oid, 7, 0, 0, 0, 100, 5, 0))
    book.apply_event(Trade("BTCUSDT", next(seq), 0, 1, 100, 5, 1, 1, 7, 9, 8, 0, 0))
    book.apply_event(Done("BTCUSDT", next(seq), 0, 1, 7))
    book.apply_event(Done("BTCUSDT", next(seq), 0, 9, 8))
    book.apply_event(Cancelled("BTCUSDT", next(seq), 0, 2, 7, 5, 0))
    assert book.find(7, "BTCUSDT", 1).status == "FILLED"
    book.apply_event(Cancelled("BTCUSDT", next(seq), 0, 3, 7, 5, 0))
    assert book.find(7, "BTCUSDT", 1) is None, "the oldest finished order is forgotten"
    assert book.find(7, "BTCUSDT", client_order_id="c1") is None
    assert book.find(7, "BTCUSDT", 4).status == "NEW", "open orders are never forgotten"
    assert [o.order_id for o in book.user_orders(7)] == [2, 3, 4]
    assert len(book.trades[7]) == 1, "trade history has its own bound"


def test_response_cache_ttl_and_bound():
    from gateway.cache import TTL_S, ResponseCache, cache_control

    cache = ResponseCache(max_entries=2)
    cache.put("a", b"1", now=10.0, ttl_s=0.1)
    assert cache.get("a", 10.05) == b"1"
    assert cache.get("a", 10.1) is None, "expired at its TTL"
    cache.put("b", b"2", 20.0, 60)
    cache.put("c", b"3", 20.0, 60)
    cache.put("d", b"4", 20.0, 60)            # full of live entries: starts afresh
    assert cache.get("d", 20.0) == b"4" and len(cache._entries) <= 2
    assert (TTL_S["/api/v3/ticker/24hr"], TTL_S["/api/v3/depth"], TTL_S["/api/v3/trades"],
            TTL_S["/api/v3/exchangeInfo"]) == (1.0, 0.1, 0.5, 60.0)
    assert cache_control(60.0) == "public, max-age=60"


def test_new_order_bodies_are_schema_valid():
    """The gateway writes new orders to keel.requests itself (gateway.place_record), not
    through the codec's schema walk: every form parse_new_order accepts, with the default
    client order id, must encode as a valid OrderRequest — and the direct writer's bytes
    must be the codec's, byte for byte."""
    from gateway.order_form import protection_price
    from gateway.place_record import PlaceRecordWriter
    from schemas.codec import Codec

    codec = Codec()
    writer = PlaceRecordWriter(codec)
    prefix = "0123456789abcdef"
    queries = [
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&price=100.50&quantity=0.1",
        "symbol=ETHUSDT&side=SELL&type=LIMIT&timeInForce=IOC&price=2000&quantity=0.01"
        "&newClientOrderId=my-order_1",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=FOK&price=1&quantity=20"
        "&selfTradePreventionMode=EXPIRE_BOTH",
        "symbol=BTCUSDT&side=SELL&type=LIMIT_MAKER&price=30000&quantity=0.001",
        "symbol=BTCUSDT&side=SELL&type=MARKET&quoteOrderQty=10",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quoteOrderQty=10",
        "symbol=BTCUSDT&side=SELL&type=MARKET&quantity=0.5",
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.5",
    ]
    for n, query in enumerate(queries):
        form = protection_price(_order(query), [(2_999_000, 10**6)], [(3_000_000, 10**6)])
        client_id = form.client_order_id or f"keel{prefix[:12]}{2**64 + n:x}"
        assert len(client_id) <= 36
        record = {"request_id": f"{prefix}{n:x}", "user_id": 7, "ts": 1, "body":
                  form.body(client_id)}
        data = codec.encode("order_request", record, validate=True)
        assert codec.decode("order_request", data)["body"] == form.body(client_id), query
        assert writer.header is not None
        assert writer.encode(record["request_id"], 7, 1, form.body(client_id)[1]) == data


def test_place_record_writer_matches_the_codec_at_the_edges():
    """Zigzag varints across their byte boundaries, negative and 2**62-sized values, no
    client order id, a non-ASCII one: the direct writer and the codec agree."""
    from gateway.place_record import PlaceRecordWriter
    from schemas.codec import Codec

    codec = Codec()
    writer = PlaceRecordWriter(codec)
    values = [0, 1, 63, 64, 127, 128, 8191, 8192, 2**31 - 1, 2**31, 2**62 - 1, -1, -64, -65,
              -(2**62)]
    for n, v in enumerate(values):
        order = {"pair": "BTCUSDT", "side": n % 2, "kind": n % 3, "tif": n % 3, "price": v,
                 "qty": values[-1 - n], "quote_qty": abs(v), "stp": n % 4,
                 "client_order_id": None if n % 3 == 0 else f"c-é{n}"}
        record = {"request_id": f"r{v}", "user_id": abs(v), "ts": v, "body":
                  ("keel.PlaceOrder", order)}
        data = writer.encode(f"r{v}", abs(v), v, order)
        assert data == codec.encode("order_request", record, validate=True), v
        assert codec.decode("order_request", data)["body"] == ("keel.PlaceOrder", order)


def test_params_split_like_parse_qsl():
    """The fast split (no %XX, no '+') and parse_qsl read every query the same way."""
    from urllib.parse import parse_qsl

    from gateway.params import split_pairs

    for text in ("a=1&b=2", "a=1&&b=", "a&b=2&", "=x&y", "a=1=2&b", "", "&", "a=%41&b=c+d",
                 "symbol=BTCUSDT&price=1.5&signature=" + "f" * 64, "x=%zz&y=+"):
        assert split_pairs(text) == parse_qsl(text, keep_blank_values=True), text
