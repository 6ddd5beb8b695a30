"""keel.depth records handed to ClickHouse undecoded: the fast path of the depth load.

Decoding a depth update in Python (fastavro, a dict per price level) costs far more than
the insert. With embedded chDB the sink instead wraps the records' Avro bodies, as they
came off the topic, in an Avro object container file and lets ClickHouse's `Avro` input
format decode them. Each body is prefixed with its Kafka offset as one more Avro long, so
the container's schema is DepthUpdate with a leading `_offset` field and every row knows
its source position without a row-number trick.

Python still reads each record's first five fields (pair, update ids, ts, snapshot flag)
to drop replayed updates and cut blocks at day boundaries; the levels are never decoded
here. Records of any other writer version take the ordinary codec path.
"""
from __future__ import annotations

import json
import os
import tempfile

from schemas.catalog import default_catalog
from schemas.codec import MARKER

_SYNC = b"keel-depth-sync!"                      # any 16 bytes
HEADER_LEN = 10


def current_header() -> bytes:
    return MARKER + default_catalog().schema("depth_update").fingerprint


def _long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _container_header() -> bytes:
    raw = json.loads(default_catalog().schema("depth_update").text)
    raw["name"] = "DepthRow"
    raw["fields"] = [{"name": "_offset", "type": "long"}] + raw["fields"]
    schema = json.dumps(raw).encode()
    meta = (_long(2) + _long(11) + b"avro.schema" + _long(len(schema)) + schema
            + _long(10) + b"avro.codec" + _long(4) + b"null" + _long(0))
    return b"Obj\x01" + meta + _SYNC


_CONTAINER_HEADER = _container_header()


def read_head(value: bytes) -> tuple[str, int, int, int, bool]:
    """(pair, first_update_id, last_update_id, ts, is_snapshot) of a single-object body;
    raises ValueError when the bytes end early."""
    pos = HEADER_LEN
    fields = []
    for i in range(5):
        if i == 4:
            fields.append(value[pos] == 1)
            break
        shift = n = 0
        while True:
            b = value[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        n = (n >> 1) ^ -(n & 1)
        if i == 0:
            fields.append(value[pos:pos + n].decode())
            pos += n
        else:
            fields.append(n)
    pair, first, last, ts, snapshot = fields
    return pair, first, last, ts, snapshot


def container(rows: list[tuple[int, bytes]]) -> bytes:
    """An Avro object container of (offset, single-object bytes) rows, one row per block:
    the reader then checks every body against its own length, so a truncated record is an
    error for its block instead of silently eating its neighbour's bytes."""
    parts = [_CONTAINER_HEADER]
    one = _long(1)
    for offset, value in rows:
        body = _long(offset) + value[HEADER_LEN:]
        parts += (one, _long(len(body)), body, _SYNC)
    return b"".join(parts)


INSERT = """
INSERT INTO depth (pair, ts, first_update_id, last_update_id, is_snapshot, bid_prices,
                   bid_qtys, ask_prices, ask_qtys, _partition, _offset)
SELECT pair, fromUnixTimestamp64Milli(ts, 'UTC'), first_update_id, last_update_id,
       is_snapshot, bids.price, bids.qty, asks.price, asks.qty, {partition}, _offset
FROM file('{path}', 'Avro')
SETTINGS insert_deduplication_token = '{token}', max_threads = 1
"""


def insert_file(client, rows: list[tuple[int, bytes]], partition: int, token: str,
                directory: str | None = None) -> None:
    """Insert the rows through a temp container file that chDB reads itself."""
    fd, path = tempfile.mkstemp(prefix="depth-", suffix=".avro", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(container(rows))
        client.command(INSERT.format(partition=int(partition), path=path.replace("'", ""),
                                     token=token.replace("'", "")))
    finally:
        os.unlink(path)
