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

The same for the input: a new order's OrderRequest is read here (`Wire.request`), checked
against `Codec.decode` when built; any other request, or bytes that do not read, go
through the codec. After the Lane (streams.bulk), py-spy (--gil, bench/streams.py --only
accounts) put the encoders' varints at 13% of the worker and fastavro's reader at 12%.
"""
from __future__ import annotations

from engine.domain import Place
from schemas.codec import COMMANDS, REGISTRY_HEADER, SINGLE_HEADER, Codec
from schemas.records import command_to_record
from schemas.varint import framing as _header
from schemas.varint import string, varint

_STRINGS: dict[str, bytes] = {}     # pair and asset names
_NULL = b"\x00"                     # a ["null", X] union's first branch
_SOME = b"\x02"                     # ... and its second, X
_PLACE = b"\x00"                    # Place, the command union's first branch
_EMPTY = b"\x00"                    # "" (length 0): an accepted request's message
_OK_EMPTY = b"\x00\x00"             # a Reply's code 0 (OK) and its empty message


# Base-128 varints by 14-bit groups: _END[n] is the varint of n < 2**14, _MORE[n] the
# two bytes of a 14-bit group that more groups follow.
_END = [varint(n) for n in range(1 << 14)]
_MORE = [bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(1 << 14)]


def _zz(n: int) -> bytes:
    """schemas.varint.zigzag(n), by table lookups instead of a loop a byte: ~3x faster
    for the 4- to 8-byte values (prices, order ids, timestamps, balances). The result is
    also kept in _ZZ, which the writers below read first."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        out = _END[z]
    elif z < 0x10000000:
        out = _MORE[z & 0x3FFF] + _END[z >> 14]
    elif z < 0x40000000000:
        out = _MORE[z & 0x3FFF] + _MORE[z >> 14 & 0x3FFF] + _END[z >> 28]
    elif z < 0x100000000000000:
        out = b"".join((_MORE[z & 0x3FFF], _MORE[z >> 14 & 0x3FFF], _MORE[z >> 28 & 0x3FFF],
                        _END[z >> 42]))
    else:
        out = varint(z)
    if len(_ZZ) >= _ZZ_SIZE:
        _ZZ.clear()
    _ZZ[n] = out
    return out


# Values already written, and their bytes: most fields of accounts' outputs repeat (user
# ids, timestamps, prices, quantities, sides, versions, and each order id in both its
# Place and its Reply), and a dict lookup costs a fraction of _zz's call (in-process, the
# 11 fields of a Place: ~375 ns a field by _zz, ~75 by `_ZZ.get(n) or _zz(n)`). Only ints
# reach these writers (decoded records and the ledger's integer arithmetic).
_ZZ: dict[int, bytes] = {}
_ZZ_SIZE = 1 << 16


def _interned(text: str) -> bytes:
    """A pair or asset name (a few distinct values)."""
    out = _STRINGS.get(text)
    if out is None:
        out = _STRINGS[text] = string(text)
    return out


def _opt_string(text: str | None) -> bytes:
    return _NULL if text is None else _SOME + string(text)


def _opt_long(n: int | None) -> bytes:
    return _NULL if n is None else _SOME + (_ZZ.get(n) or _zz(n))


def place_body(cmd: Place, request_id: str | None) -> bytes:
    pair, order_id, user_id, side, kind, tif, price, qty, quote_qty, stp, ts = cmd
    z = _ZZ.get
    return b"".join((
        _NULL if request_id is None else _SOME + string(request_id), _PLACE,
        _STRINGS.get(pair) or _interned(pair), z(order_id) or _zz(order_id),
        z(user_id) or _zz(user_id), z(side) or _zz(side), z(kind) or _zz(kind),
        z(tif) or _zz(tif), z(price) or _zz(price), z(qty) or _zz(qty),
        z(quote_qty) or _zz(quote_qty), z(stp) or _zz(stp), z(ts) or _zz(ts)))


def reply_body(r: dict) -> bytes:
    pair, message, user_id, ts, code = r["pair"], r["message"], r["user_id"], r["ts"], r["code"]
    z = _ZZ.get
    return b"".join((
        string(r["request_id"]), z(user_id) or _zz(user_id), z(ts) or _zz(ts),
        z(code) or _zz(code), string(message) if message else _EMPTY,
        _NULL if pair is None else _SOME + (_STRINGS.get(pair) or _interned(pair)),
        _opt_long(r["order_id"]), _opt_string(r["client_order_id"])))


def balance_body(b: dict) -> bytes:
    user_id, asset, available, held, version, ts = (
        b["user_id"], b["asset"], b["available"], b["held"], b["version"], b["ts"])
    z = _ZZ.get
    return b"".join((
        z(user_id) or _zz(user_id), _STRINGS.get(asset) or _interned(asset),
        z(available) or _zz(available), z(held) or _zz(held), z(version) or _zz(version),
        z(ts) or _zz(ts)))


# ---- reading keel.requests: an OrderRequest whose body is a PlaceOrder ----

_INT32, _INT64 = 1 << 31, 1 << 63
_NAMES: dict[bytes, str] = {}           # pair names, by their UTF-8 bytes


def _long(data: bytes, pos: int, bound: int = _INT64) -> tuple[int, int]:
    """The Avro long (or int, `bound` 2**31) at `pos`, and the position after it. Up to
    four bytes (below 2**28: within either bound) are read without the loop: prices,
    quantities and user ids take one to four, a timestamp's loop three turns, not six.
    A varint longer than it needs to be (a last byte of 0) is a ValueError: the codec
    reads it, and `Wire.new_order` may copy only bytes the codec would write."""
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    c = data[pos + 1]
    if c < 0x80:
        if not c:
            raise ValueError("overlong varint")
        n = b & 0x7F | c << 7
        return (n >> 1) ^ -(n & 1), pos + 2
    d = data[pos + 2]
    if d < 0x80:
        if not d:
            raise ValueError("overlong varint")
        n = b & 0x7F | (c & 0x7F) << 7 | d << 14
        return (n >> 1) ^ -(n & 1), pos + 3
    e = data[pos + 3]
    n = b & 0x7F | (c & 0x7F) << 7 | (d & 0x7F) << 14 | (e & 0x7F) << 21
    if e < 0x80:
        if not e:
            raise ValueError("overlong varint")
        return (n >> 1) ^ -(n & 1), pos + 4
    pos, shift = pos + 3, 28
    while True:
        pos += 1
        b = data[pos]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            if not b:
                raise ValueError("overlong varint")
            n = (n >> 1) ^ -(n & 1)
            if not -bound <= n < bound:
                raise ValueError("out of range")
            return n, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise ValueError("string past the end")
    return data[pos:end].decode(), end


def _short_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The raw bytes of a string of up to 63 bytes (a one-byte length), or IndexError."""
    size = data[pos]
    if size >= 0x80 or size & 1:
        raise IndexError("not a short string")
    end = pos + 1 + (size >> 1)
    if end > len(data):
        raise ValueError("string past the end")
    return data[pos + 1:end], end


def order_fields(data: bytes, pos: int) -> tuple | None:
    """The OrderRequest at `pos`, if it is a PlaceOrder that ends exactly at the end of
    `data`, as one flat tuple: (request_id, user_id, ts, pair, side, kind, tif, price,
    qty, quote_qty, stp, client_order_id) and then where its parts end in `data`
    (request id, user id, ts, pair; the pair starts one byte after ts ends; stp, after
    which the client order id's union runs to the end). None if another request;
    ValueError, IndexError or UnicodeDecodeError if it does not read (the codec then
    says why). Every part it reads is written as the codec writes it (no overlong
    varint; UTF-8 that decodes), so its bytes may be copied into outputs as they are.
    Written for speed: request ids of one length byte, and side, kind and tif (and a
    limit order's qty, quote_qty and stp) of one byte each, are read without a call."""
    size = data[pos]
    if size < 0x80 and not size & 1:            # _short_string, written out
        end = pos + 1 + (size >> 1)
        if end > len(data):
            raise ValueError("string past the end")
        request_id, pos = data[pos + 1:end].decode(), end
    else:
        request_id, pos = _string(data, pos)
    rid_end = pos
    user_id, pos = _long(data, pos)
    uid_end = pos
    ts, pos = _long(data, pos)
    ts_end = pos
    if data[pos] != 0:
        return None                             # not a PlaceOrder: the codec reads it
    raw, pos = _short_string(data, pos + 1)
    pair_end = pos
    pair = _NAMES.get(raw)
    if pair is None:
        pair = raw.decode()
        if len(_NAMES) < 1024:
            _NAMES[raw] = pair
    a, b, c = data[pos:pos + 3]
    if a < 0x80 and b < 0x80 and c < 0x80:
        side, kind, tif = (a >> 1) ^ -(a & 1), (b >> 1) ^ -(b & 1), (c >> 1) ^ -(c & 1)
        pos += 3
    else:
        side, pos = _long(data, pos, _INT32)
        kind, pos = _long(data, pos, _INT32)
        tif, pos = _long(data, pos, _INT32)
    price, pos = _long(data, pos)
    a, b, c = data[pos:pos + 3]
    if a < 0x80 and b < 0x80 and c < 0x80:     # a limit order's qty, its quote_qty, stp
        qty, quote_qty, stp = (a >> 1) ^ -(a & 1), (b >> 1) ^ -(b & 1), (c >> 1) ^ -(c & 1)
        pos += 3
    else:
        qty, pos = _long(data, pos)
        quote_qty, pos = _long(data, pos)
        stp, pos = _long(data, pos, _INT32)
    stp_end = pos
    branch = data[pos]
    if branch == 0:
        cid, pos = None, pos + 1
    elif branch == 2:
        cid, pos = _string(data, pos + 1)
    else:
        raise ValueError("bad union branch")
    if pos != len(data):
        raise ValueError("bytes left after the record")
    return (request_id, user_id, ts, pair, side, kind, tif, price, qty, quote_qty, stp, cid,
            rid_end, uid_end, ts_end, pair_end, stp_end)


def place_request(data: bytes, pos: int) -> dict | None:
    """order_fields as codec.decode gives the record: a dict, or None, or the errors."""
    fields = order_fields(data, pos)
    if fields is None:
        return None
    request_id, user_id, ts, pair, side, kind, tif, price, qty, quote_qty, stp, cid = \
        fields[:12]
    return {"request_id": request_id, "user_id": user_id, "ts": ts,
            "body": ("keel.PlaceOrder", {
                "pair": pair, "side": side, "kind": kind, "tif": tif, "price": price,
                "qty": qty, "quote_qty": quote_qty, "stp": stp, "client_order_id": cid})}


_REQUEST_SAMPLES = (
    {"request_id": "é-request", "user_id": 2**40, "ts": 1_700_000_000_000, "body": (
        "keel.PlaceOrder", {"pair": "BTCUSDT", "side": 1, "kind": 2, "tif": 1,
                            "price": 3_000_000, "qty": -5, "quote_qty": 2**62, "stp": 3,
                            "client_order_id": "é-client"})},
    {"request_id": "r", "user_id": -7, "ts": 0, "body": (
        "keel.PlaceOrder", {"pair": "ETHUSDT", "side": 0, "kind": 0, "tif": 0, "price": 1,
                            "qty": 2**31, "quote_qty": 0, "stp": -2**31,
                            "client_order_id": None})},
)


def _request_header(codec: Codec) -> bytes | None:
    """The framing header of the codec's own current OrderRequest, if `place_request`
    reads every sample after it exactly as the codec does; else None."""
    found = set()
    for sample in _REQUEST_SAMPLES:
        data = codec.encode("order_request", sample)
        for size in (SINGLE_HEADER, REGISTRY_HEADER):
            try:
                if place_request(data, size) == codec.decode("order_request", data) == sample:
                    found.add(data[:size])
            except (ValueError, IndexError, UnicodeDecodeError):
                pass
    return found.pop() if len(found) == 1 else None


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
    """Encoders for accounts' outputs and a reader of its new orders, each self-checked
    against `codec` (see above)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        cmd, rid = _PLACE_SAMPLE
        self.place = _header(codec.encode(COMMANDS, command_to_record(cmd, rid)),
                             place_body(cmd, rid))
        headers = {_header(codec.encode("reply", r), reply_body(r)) for r in _REPLY_SAMPLES}
        self.reply_header = headers.pop() if len(headers) == 1 else None
        self.balance_header = _header(codec.encode("balance", _BALANCE_SAMPLE),
                                      balance_body(_BALANCE_SAMPLE))
        self.request_header = _request_header(codec)
        # new_order/accepted: only when every record involved is written as the codec does
        self.copies = None not in (self.place, self.reply_header, self.balance_header,
                                   self.request_header)
        self._place_some = (self.place or b"") + _SOME      # ... its request id is set
        self._reply_head = self.reply_header or b""

    def request(self, data: bytes) -> dict:
        """codec.decode("order_request", data): a PlaceOrder in the codec's current schema
        is read here (fastavro's reader walks the schema: ~2x the time), anything else
        (other requests, older writers, bytes that do not read) by the codec."""
        header = self.request_header
        if header is not None and data[:len(header)] == header:
            try:
                request = place_request(data, len(header))
            except (ValueError, IndexError, UnicodeDecodeError):
                request = None
            if request is not None:
                return request
        return self.codec.decode("order_request", data)

    def new_order(self, data: bytes) -> tuple | None:
        """order_fields of a PlaceOrder in the codec's current schema whose outputs
        `accepted` can write (every writer matched the codec); None for anything else,
        which `request` reads."""
        header = self.request_header
        if not self.copies or data[:len(header)] != header:
            return None
        try:
            return order_fields(data, len(header))
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    def accepted(self, data: bytes, fields: tuple, order_id: int, asset: str,
                 available: int, held: int, version: int) -> tuple[bytes, bytes, bytes]:
        """The Place, Reply and Balance of the new order `data` (read by `new_order` into
        `fields`) that accounts accepted as `order_id`, holding `asset` to `available` /
        `held` / `version`: the bytes `command`, `reply` and `balance` write for them, most
        copied from the request's own (request id, user id, ts, pair, the order's terms,
        client order id: each written the same way in all four records)."""
        start = len(self.request_header)
        rid_end, uid_end, ts_end, pair_end, stp_end = fields[12:]
        oid = _ZZ.get(order_id) or _zz(order_id)
        rid, uid, ts = data[start:rid_end], data[rid_end:uid_end], data[uid_end:ts_end]
        pair = data[ts_end + 1:pair_end]
        z = _ZZ.get
        return (
            b"".join((self._place_some, rid, _PLACE, pair, oid, uid, data[pair_end:stp_end],
                      ts)),
            b"".join((self._reply_head, rid, uid, ts, _OK_EMPTY, _SOME, pair, _SOME, oid,
                      data[stp_end:])),
            b"".join((self.balance_header, uid, _STRINGS.get(asset) or _interned(asset),
                      z(available) or _zz(available), z(held) or _zz(held),
                      z(version) or _zz(version), ts)))

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
