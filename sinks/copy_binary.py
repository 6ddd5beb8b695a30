"""Rows held column by column -> PostgreSQL's binary COPY stream, built with numpy.

In the binary format every row is a field count, then per field a 4-byte length (-1 for
NULL) and the value in network byte order. Rows whose NULLs fall in the same places and
whose text fields are equal share one fixed layout, so each such group is one numpy
structured array; a batch has a handful of groups (pairs x statuses), never one Python
call per row. The rows then go out in the order they were given, not group by group:
the sink gives them in primary-key order, and a b-tree insert of a key above every
key in the index skips the descent from the root (PostgreSQL's rightmost-leaf fast
path). Group after group restarted the order ids at each group, so most keys landed
between stored ones: the server's CPU per event was ~10% higher (sinks/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
_INT = {"int8": (">i8", None), "int4": (">i4", (-(1 << 31), (1 << 31) - 1)),
        "int2": (">i2", (-(1 << 15), (1 << 15) - 1))}


@dataclass
class Table:
    """Rows for `COPY table (names) FROM STDIN (FORMAT BINARY)`.

    types: "int8", "int4", "int2" or "text". An int column is an int64 array; a text
    column is an array of codes into `texts[i]` (a list of str), code -1 meaning NULL.
    `nulls[i]`, when not None, is a bool mask of NULL ints.
    """
    names: tuple[str, ...]
    types: tuple[str, ...]
    values: list[np.ndarray]
    nulls: list[np.ndarray | None]
    texts: list[list[str] | None]

    def __len__(self) -> int:
        return len(self.values[0]) if self.values else 0

    def payload(self) -> bytes:
        """The whole COPY stream (header, rows in their order, trailer)."""
        groups = list(self._groups())
        if len(groups) <= 1:
            return HEADER + b"".join(block.tobytes() for _, block in groups) + TRAILER
        # Each group's rows, fixed-size each, go to their own rows of an array as wide as
        # the longest row; the padding is then dropped in one boolean-mask pass (the mask
        # is one row per group, gathered per row: comparing every byte's column with its
        # row's width cost as much as the pass itself).
        widths = [block.shape[1] for _, block in groups]
        width = max(widths)
        grid = np.empty((len(self), width), np.uint8)
        group = np.empty(len(self), np.intp)
        for g, (rows, block) in enumerate(groups):
            grid[rows, :widths[g]] = block
            group[rows] = g
        keep = (np.arange(width) < np.array(widths)[:, None])[group]
        return HEADER + grid[keep].tobytes() + TRAILER

    def rows(self) -> list[tuple]:
        """The rows as Python tuples (None for NULL): for tests and small statements."""
        cols = []
        for ty, values, nulls, texts in zip(self.types, self.values, self.nulls, self.texts,
                                            strict=True):
            if ty == "text":
                cols.append([None if c < 0 else texts[c] for c in values.tolist()])
            else:
                v = values.tolist()
                if nulls is not None:
                    v = [None if z else x for x, z in zip(v, nulls.tolist(), strict=True)]
                cols.append(v)
        return list(zip(*cols, strict=True))

    def _groups(self):
        """(rows, their bytes: a uint8 array of a row each) of every group of rows that
        share one layout."""
        n = len(self)
        if not n:
            return
        for ty, values in zip(self.types, self.values, strict=True):
            bounds = _INT.get(ty, (None, None))[1]
            if bounds and len(values) and (values.min() < bounds[0] or values.max() > bounds[1]):
                raise ValueError(f"a value does not fit PostgreSQL {ty}")
        # One group key from every column that can change the layout.
        key = np.zeros(n, np.int64)
        for ty, values, nulls, texts in zip(self.types, self.values, self.nulls, self.texts,
                                            strict=True):
            if ty == "text":
                key = key * (len(texts) + 1) + (values + 1)
            elif nulls is not None:
                key = key * 2 + nulls
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        cuts = np.flatnonzero(np.diff(sorted_key)) + 1
        for rows in np.split(order, cuts):
            yield rows, self._block(rows)

    def _block(self, rows: np.ndarray) -> np.ndarray:
        first = int(rows[0])
        layout = [("count", ">i2")]
        fill = []
        for i, (ty, values, nulls, texts) in enumerate(
                zip(self.types, self.values, self.nulls, self.texts, strict=True)):
            if ty == "text":
                code = int(values[first])
                if code < 0:
                    layout.append((f"l{i}", ">i4"))
                    fill.append((f"l{i}", -1, None))
                    continue
                data = texts[code].encode()
                layout.append((f"l{i}", ">i4"))
                fill.append((f"l{i}", len(data), None))
                if data:
                    layout.append((f"v{i}", f"S{len(data)}"))
                    fill.append((f"v{i}", data, None))
            elif nulls is not None and nulls[first]:
                layout.append((f"l{i}", ">i4"))
                fill.append((f"l{i}", -1, None))
            else:
                dtype = _INT[ty][0]
                layout.append((f"l{i}", ">i4"))
                layout.append((f"v{i}", dtype))
                fill.append((f"l{i}", int(dtype[-1]), None))
                fill.append((f"v{i}", None, values))
        block = np.empty(len(rows), np.dtype(layout))
        block["count"] = len(self.types)
        for name, constant, values in fill:
            block[name] = constant if values is None else values[rows]
        return block.view(np.uint8).reshape(len(rows), -1)
