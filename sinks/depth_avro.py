"""keel.depth records handed to ClickHouse undecoded: the fast path of the depth load.

Decoding a depth update in Python (fastavro, a dict per price level) costs far more than
the insert. With embedded chDB the sink instead hands ClickHouse the records' Avro bodies,
as they came off the topic, inside an Avro object container file, and ClickHouse's `Avro`
input format decodes them. Every record of an insert block sits in one Avro block: that
is safe because sinks/depth_columns.py has walked each body to its last byte first, so
ClickHouse's reader cuts the block exactly where the records end.

Each record keeps its 10-byte single-object header slot, declared in the container's
schema as a `fixed` field in front of the DepthUpdate fields, and the slot is overwritten
with the record's Kafka offset and partition (8 and 2 bytes, little-endian). So the
container is the topic's bytes with one array store, no per-record copy in Python, every
row knows its source position without a row-number trick, and one insert can carry the
records of several partitions.

Records of any other writer version, or any shape the walk does not vouch for, take the
ordinary codec path.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from schemas.catalog import default_catalog
from schemas.codec import MARKER
from sinks.depth_columns import HEADER_LEN

_SYNC = b"keel-depth-sync!"                      # any 16 bytes


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
    raw["fields"] = [{"name": "_position",
                      "type": {"type": "fixed", "name": "Position", "size": HEADER_LEN}},
                     *raw["fields"]]
    schema = json.dumps(raw).encode()
    meta = (_long(2) + _long(11) + b"avro.schema" + _long(len(schema)) + schema
            + _long(10) + b"avro.codec" + _long(4) + b"null" + _long(0))
    return b"Obj\x01" + meta + _SYNC


_CONTAINER_HEADER = _container_header()


def container_parts(values: list[bytes], offsets: np.ndarray, partitions: np.ndarray
                    ) -> tuple[bytes, memoryview, bytes]:
    """(head, records, tail) of an Avro container holding `values` (single-object bytes,
    each already walked by depth_columns) in one block, each header slot overwritten with
    the record's offset (8 bytes) and partition (2 bytes), little-endian."""
    buf = np.frombuffer(b"".join(values), np.uint8).copy()
    lens = np.fromiter(map(len, values), np.int64, count=len(values))
    starts = np.cumsum(lens) - lens
    slot = starts[:, None] + np.arange(HEADER_LEN)
    position = np.empty((len(values), HEADER_LEN), np.uint8)
    position[:, :8] = np.asarray(offsets, "<u8").view(np.uint8).reshape(-1, 8)
    position[:, 8:] = np.asarray(partitions, "<u2").view(np.uint8).reshape(-1, 2)
    buf[slot] = position
    head = _CONTAINER_HEADER + _long(len(values)) + _long(len(buf))
    return head, memoryview(buf), _SYNC


def container(values: list[bytes], offsets: np.ndarray, partitions: np.ndarray) -> bytes:
    head, records, tail = container_parts(values, offsets, partitions)
    return head + records.tobytes() + tail


INSERT = """
INSERT INTO depth (pair, ts, first_update_id, last_update_id, is_snapshot, bid_prices,
                   bid_qtys, ask_prices, ask_qtys, _partition, _offset)
SELECT pair, fromUnixTimestamp64Milli(ts, 'UTC'), first_update_id, last_update_id,
       is_snapshot, bids.price, bids.qty, asks.price, asks.qty,
       reinterpretAsUInt16(substring(_position, 9, 2)),
       reinterpretAsUInt64(substring(_position, 1, 8))
FROM file('{path}', 'Avro')
SETTINGS insert_deduplication_token = '{token}', max_threads = 1
"""


def insert_file(client, values: list[bytes], offsets: np.ndarray, partitions: np.ndarray,
                token: str, directory: str | None = None) -> None:
    """Insert the records through a temp container file that chDB reads itself."""
    if len(partitions) and int(np.max(partitions)) > 0xFFFF:
        raise ValueError("a partition number past 65535 does not fit the position slot")
    fd, path = tempfile.mkstemp(prefix="depth-", suffix=".avro", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in container_parts(values, offsets, partitions):
                out.write(part)
        client.command(INSERT.format(path=path.replace("'", ""),
                                     token=token.replace("'", "")))
    finally:
        os.unlink(path)
