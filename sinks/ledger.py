"""keel.settlements -> ledger entries, keel.balances -> the balances projection.

Both loads are idempotent on their own, with no watermark:
  ledger_entries  one row per entry of a settlement, natural key (user_id, pair, seq,
                  reason, order_id, asset): a redelivered settlement inserts nothing
                  (ON CONFLICT DO NOTHING).
  balances        one row per (user_id, asset), replaced only by a record of a higher
                  version: redelivered or out-of-order records never move it back.
Rows go through session temp tables (binary COPY, then one INSERT ... SELECT), in the
same transaction as the engine events of the batch.
"""
from __future__ import annotations

import numpy as np

from schemas.codec import Codec, CodecError, CodecFault
from sinks.copy_binary import Table

LEDGER_COLUMNS = ("user_id", "pair", "seq", "ts", "reason", "order_id", "trade_id", "asset",
                  "available_delta", "held_delta")
LEDGER_TYPES = ("int8", "text", "int8", "int8", "int2", "int8", "int8", "text", "int8",
                "int8")
BALANCE_COLUMNS = ("user_id", "asset", "available", "held", "version", "ts")
BALANCE_TYPES = ("int8", "text", "int8", "int8", "int8", "int8")

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_ledger (
    user_id bigint, pair text, seq bigint, ts bigint, reason smallint, order_id bigint,
    trade_id bigint, asset text, available_delta bigint, held_delta bigint)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_balances (
    user_id bigint, asset text, available bigint, held bigint, version bigint, ts bigint)
    ON COMMIT DELETE ROWS;
"""
_COLS = ", ".join(LEDGER_COLUMNS)
MOVE_LEDGER = (f"INSERT INTO ledger_entries ({_COLS}) SELECT {_COLS} FROM stage_ledger "
               "ON CONFLICT (user_id, pair, seq, reason, order_id, asset) DO NOTHING")
_BCOLS = ", ".join(BALANCE_COLUMNS)
UPSERT_BALANCES = (
    f"INSERT INTO balances ({_BCOLS}) SELECT {_BCOLS} FROM stage_balances "
    "ON CONFLICT (user_id, asset) DO UPDATE SET available = EXCLUDED.available, "
    "held = EXCLUDED.held, version = EXCLUDED.version, ts = EXCLUDED.ts "
    "WHERE balances.version < EXCLUDED.version")

_SMALLINT = (-(1 << 15), (1 << 15) - 1)


def decode_settlement(codec: Codec, value: bytes) -> dict:
    record = codec.decode("settlement", value)
    if not _SMALLINT[0] <= record["reason"] <= _SMALLINT[1]:
        raise CodecError(CodecFault.INVALID_RECORD,
                         f"settlement: reason {record['reason']} is out of range")
    return record


def decode_balance(codec: Codec, value: bytes) -> dict:
    return codec.decode("balance", value)


def _texts(values: list[str]) -> tuple[np.ndarray, list[str]]:
    codes: dict[str, int] = {}
    index = np.fromiter((codes.setdefault(v, len(codes)) for v in values), np.int64,
                        count=len(values))
    return index, list(codes)


def ledger_table(settlements: list[dict]) -> Table:
    """One row per entry of every settlement, in order."""
    rows = [(s["user_id"], s["pair"], s["seq"], s["ts"], s["reason"], s["order_id"],
             s["trade_id"], e["asset"], e["available_delta"], e["held_delta"])
            for s in settlements for e in s["entries"]]
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(LEDGER_COLUMNS)
    values, nulls, texts = [], [], []
    for name, ty, column in zip(LEDGER_COLUMNS, LEDGER_TYPES, cols, strict=True):
        if ty == "text":
            index, names = _texts(list(column))
            values.append(index)
            nulls.append(None)
            texts.append(names)
            continue
        null = np.fromiter((v is None for v in column), bool, count=len(column))
        values.append(np.fromiter((0 if v is None else v for v in column), np.int64,
                                  count=len(column)))
        nulls.append(null if name in ("order_id", "trade_id") else None)
        texts.append(None)
    return Table(LEDGER_COLUMNS, LEDGER_TYPES, values, nulls, texts)


def balance_table(balances: list[dict]) -> Table:
    """The highest version per (user_id, asset) in the batch (one statement may not update
    a row twice)."""
    best: dict[tuple[int, str], dict] = {}
    for b in balances:
        key = (b["user_id"], b["asset"])
        have = best.get(key)
        if have is None or b["version"] > have["version"]:
            best[key] = b
    rows = list(best.values())
    assets, names = _texts([b["asset"] for b in rows])
    values = [assets if c == "asset" else
              np.fromiter((b[c] for b in rows), np.int64, count=len(rows))
              for c in BALANCE_COLUMNS]
    return Table(BALANCE_COLUMNS, BALANCE_TYPES, values, [None] * 6,
                 [None, names, None, None, None, None])
