"""keel.depth records handed to ClickHouse as one Native block: the fast path of the depth
load on embedded chDB.

Decoding a depth update in Python (fastavro, a dict per price level) costs far more than
the insert, and ClickHouse's own Avro reader costs ~2 us a row more than its Native one
(measured on chDB: 2.0 against 0.46 us/row for the same 20k rows). So sinks/depth_columns.py
reads every record's head and levels into columns by array operations, after walking
each record to its last byte, and this module lays those columns out as ClickHouse's
Native format (a column after another, arrays as end offsets then values, exactly the
table's types) for one `INSERT ... FROM file(..., 'Native')`. No per-record Python.

Each row carries its Kafka partition and offset like every other depth row. Records of
any other writer version, or any shape the walk does not vouch for, take the ordinary
codec path.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from schemas.catalog import default_catalog
from schemas.codec import MARKER
from schemas.varint import varint
from sinks.depth_columns import DepthHeads, Levels


def current_header() -> bytes:
    return MARKER + default_catalog().schema("depth_update").fingerprint


def _text(s: str) -> bytes:
    data = s.encode()
    return varint(len(data)) + data


def _column(name: str, type_: str) -> bytes:
    return _text(name) + _text(type_)


def _strings(names: list[str], codes: np.ndarray) -> bytes:
    """A String column of names[code] per row, built from one template per name: a
    repeat of it per run of one name (a block in pair order is a run a pair), else a
    row-by-row gather of the templates."""
    encoded = [_text(n) for n in names]
    runs = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    if len(runs) * 64 < len(codes):
        starts = [0, *runs.tolist()]
        lengths = np.diff([*starts, len(codes)]).tolist()
        return b"".join(encoded[c] * n for c, n in
                        zip(codes[starts].tolist(), lengths, strict=True))
    width = max(len(e) for e in encoded)
    table = np.zeros((len(encoded), width), np.uint8)
    for i, e in enumerate(encoded):
        table[i, :len(e)] = np.frombuffer(e, np.uint8)
    sizes = np.array([len(e) for e in encoded], np.int64)
    grid = table[codes]
    return grid[np.arange(width) < sizes[codes][:, None]].tobytes()


def _array(levels: Levels, values: np.ndarray) -> list[bytes]:
    return [np.cumsum(levels.count, dtype="<u8").tobytes(),
            np.asarray(values, "<i8").tobytes()]           # no copy before the bytes


def block(heads: DepthHeads, partitions: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """A Native block of every record of `heads` (columns in the depth table's order),
    each row with its partition and offset; as parts to write one after another."""
    n = len(heads)
    out = [varint(11) + varint(n)]

    def col(name: str, type_: str, *data: bytes) -> None:
        out.append(_column(name, type_))
        out.extend(data)

    col("pair", "String", _strings(heads.pairs, heads.pair) if n else b"")
    col("ts", "DateTime64(3, 'UTC')", heads.ts.astype("<i8").tobytes())
    col("first_update_id", "UInt64", heads.first.astype("<u8").tobytes())
    col("last_update_id", "UInt64", heads.last.astype("<u8").tobytes())
    col("is_snapshot", "Bool", heads.snapshot.astype(np.uint8).tobytes())
    col("bid_prices", "Array(Int64)", *_array(heads.bids, heads.bids.price))
    col("bid_qtys", "Array(Int64)", *_array(heads.bids, heads.bids.qty))
    col("ask_prices", "Array(Int64)", *_array(heads.asks, heads.asks.price))
    col("ask_qtys", "Array(Int64)", *_array(heads.asks, heads.asks.qty))
    col("_partition", "UInt32", np.asarray(partitions).astype("<u4").tobytes())
    col("_offset", "UInt64", np.asarray(offsets).astype("<u8").tobytes())
    return out


INSERT = ("INSERT INTO depth SELECT * FROM file('{path}', 'Native') "
          "SETTINGS insert_deduplication_token = '{token}', max_threads = 1")


BLOCK_FILES = "depth-*.native"


def insert_file(client, parts: Sequence[bytes], token: str, directory: str | None = None
                ) -> None:
    """Insert one Native block through a temp file that chDB reads itself (in `directory`,
    the system's temp dir if None). A process killed meanwhile leaves the file behind:
    see clear_blocks."""
    fd, path = tempfile.mkstemp(prefix="depth-", suffix=".native", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                out.write(part)
        client.command(INSERT.format(path=path.replace("'", ""),
                                     token=token.replace("'", "")))
    finally:
        os.unlink(path)


def clear_blocks(directory: Path) -> int:
    """Remove the block files left in `directory` by a sink killed mid-insert (each is as
    large as a batch's depth: ~1.5 MB in the tests' SIGKILL runs, which left them in /tmp
    before). Only for a directory of the process that owns chDB: no other writes there.
    Returns how many were removed."""
    removed = 0
    for path in directory.glob(BLOCK_FILES):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
