"""Engine events (columns) -> trades and each order's net change per batch (columns).

The same fold as sinks/orders.py (the reference, one event at a time; tests hold the two
equal), done with array operations so that a batch of 100,000 events costs milliseconds.
Every event that names an order becomes a "touch" of that order (a trade touches two);
touches sorted by (pair, order, position in the batch) put each order's story in one
run, and every result is a reduction over runs:

    filled_qty, filled_quote  sums over the order's fills
    remaining                 set by its last Accepted/Amended/Cancelled/Expired/Done,
                              minus the fills after it (`minus` alone when none set it)
    status                    the last Accepted/exit, turned PARTIALLY_FILLED by a later
                              fill only when it was NEW; fills alone make it PARTIALLY_FILLED
    price                     the last Accepted/Amended
A Rejected names a new order only when it is the first and only touch of its order id in
the batch and is not UNKNOWN_ORDER (as in the reference: a rejection after anything else
of the same id changes nothing, and anything after a rejection is the resting order's).

`fresh()` is the exactly-once rule: per pair, only seqs above the stored watermark and
above every seq before them in the batch are applied.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.domain import ResultCode
from sinks.copy_binary import Table
from sinks.event_columns import KIND, EventColumns, col
from sinks.orders import ORDER_COLUMNS, TRADE_COLUMNS, UPDATE_COLUMNS

STATUSES = ["NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED", "REJECTED"]
NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED = range(6)
NONE = -1

# Touch types.
_ACCEPT, _REJECT, _FILL, _CANCEL, _EXPIRE, _DONE, _AMEND = range(7)
_STATUS_OF = np.array([NEW, REJECTED, NONE, CANCELED, EXPIRED, FILLED, NONE], np.int64)
_SETS_REMAINING = np.array([1, 0, 0, 1, 1, 1, 1], bool)
_SETS_STATUS = np.array([1, 0, 0, 1, 1, 1, 0], bool)
_EXITS = np.array([0, 0, 0, 1, 1, 1, 0], bool)
_SETS_PRICE = np.array([1, 0, 0, 0, 0, 0, 1], bool)

TRADE_TYPES = ("text", "int8", "int8", "int8", "int8", "int8", "int2", "int8", "int8",
               "int8", "int8", "int8", "int8")
ORDER_TYPES = ("text", "int8", "int8", "int2", "int2", "int2", "int8", "int8", "int8",
               "int8", "int8", "int8", "text", "int4", "int8", "int8", "int8")
UPDATE_TYPES = ("text", "int8", "int8", "int8", "int8", "int8", "int8", "text", "int4",
                "int8", "int8")
# |price * qty| must stay inside bigint; past this bound the sum could wrap unseen.
_PRODUCT_LIMIT = float(1 << 62)


@dataclass
class OrderTables:
    trades: Table
    new_orders: Table        # orders accepted in this batch: whole rows
    rejected: Table          # ids first seen rejected: whole rows, may already exist
    updates: Table           # deltas for orders stored by an earlier batch


def fresh(cols: EventColumns, marks: dict[str, int]):
    """(keep mask, {pair: last seq}, [(pair, after, got)] gaps) under the watermarks."""
    keep = np.zeros(len(cols), bool)
    last: dict[str, int] = {}
    gaps: list[tuple[str, int, int]] = []
    for code, name in enumerate(cols.pairs):
        rows = np.flatnonzero(cols.pair == code)
        if not len(rows):
            continue
        seq = cols.seq[rows]
        mark = marks.get(name, 0)
        before = np.maximum.accumulate(np.concatenate(([mark], seq)))[:-1]
        kept = seq > before
        keep[rows[kept]] = True
        jump = kept & (seq != before + 1) & ((before != 0) | (seq != 1))
        gaps += [(name, a, b) for a, b in zip(before[jump].tolist(), seq[jump].tolist(),
                                               strict=True)]
        last[name] = max(mark, int(seq.max()))
    return keep, last, gaps


def fold(cols: EventColumns) -> OrderTables:
    """The tables of one batch of fresh events (each applied exactly once)."""
    pair_texts = list(cols.pairs)
    return OrderTables(_trades(cols, pair_texts), *_orders(cols, pair_texts))


def _trades(cols: EventColumns, pair_texts: list[str]) -> Table:
    rows = np.flatnonzero(cols.kind == KIND["Trade"])
    f = cols.fields[rows]
    values = [cols.pair[rows], f[:, col("Trade", "trade_id")], cols.seq[rows], cols.ts[rows]]
    values += [f[:, col("Trade", name)] for name in TRADE_COLUMNS[4:]]
    return Table(TRADE_COLUMNS, TRADE_TYPES, values, [None] * len(values),
                 [pair_texts] + [None] * (len(values) - 1))


def _touches(cols: EventColumns):
    """(event index, sub, type, order id, user id, amount, price, reason) of every touch."""
    parts = []
    k, f = cols.kind, cols.fields

    def add(kind, typ, oid, uid, amount=None, price=None, reason=None, sub=0, where=None):
        rows = np.flatnonzero(k == KIND[kind] if where is None else where)
        g = f[rows]
        zero = np.zeros(len(rows), np.int64)
        parts.append((rows, np.full(len(rows), sub), np.full(len(rows), typ),
                      g[:, col(kind, oid)], g[:, col(kind, uid)],
                      zero if amount is None else g[:, col(kind, amount)],
                      zero if price is None else g[:, col(kind, price)],
                      zero if reason is None else g[:, col(kind, reason)]))

    add("Accepted", _ACCEPT, "order_id", "user_id", "qty", "price")
    rejected = (k == KIND["Rejected"]) & (
        f[:, col("Rejected", "code")] != int(ResultCode.UNKNOWN_ORDER))
    add("Rejected", _REJECT, "order_id", "user_id", reason="code", where=rejected)
    add("Trade", _FILL, "maker_order_id", "maker_user_id", "qty", "price", sub=0)
    add("Trade", _FILL, "taker_order_id", "taker_user_id", "qty", "price", sub=1)
    add("Cancelled", _CANCEL, "order_id", "user_id", "remaining", reason="reason")
    add("Expired", _EXPIRE, "order_id", "user_id", "remaining", reason="reason")
    add("Done", _DONE, "order_id", "user_id")
    add("Amended", _AMEND, "order_id", "user_id", "qty", "price")
    ev, sub, typ, oid, uid, amount, price, reason = (np.concatenate(c) for c in zip(*parts, strict=True))
    pair = cols.pair[ev]
    order = np.lexsort((sub, ev, oid, pair))
    return [a[order] for a in (ev, typ, pair, oid, uid, amount, price, reason)]


def _runs(pair: np.ndarray, oid: np.ndarray) -> np.ndarray:
    """True where a new order's run starts (touches sorted by pair, order id)."""
    first = np.ones(len(pair), bool)
    first[1:] = (pair[1:] != pair[:-1]) | (oid[1:] != oid[:-1])
    return first


def _orders(cols: EventColumns, pair_texts: list[str]):
    ev, typ, pair, oid, uid, amount, price, reason = _touches(cols)
    fill = typ == _FILL
    if fill.any() and (np.abs(price[fill].astype(float)) * np.abs(amount[fill].astype(float))
                       ).sum() >= _PRODUCT_LIMIT:
        # PostgreSQL would refuse the bigint; numpy would wrap without a word.
        raise ValueError("the fills' price * qty do not fit a bigint")
    # A rejection after anything of the same id changes nothing.
    keep = ~((typ == _REJECT) & ~_runs(pair, oid))
    ev, typ, pair, oid, uid, amount, price, reason = (
        a[keep] for a in (ev, typ, pair, oid, uid, amount, price, reason))
    first = _runs(pair, oid)
    starts = np.flatnonzero(first)
    # The order row keeps the user of its first touch, even if that was a rejection.
    user = uid[starts]
    # A rejection followed by more of the same id: the rest is the resting order's.
    size = np.diff(np.append(starts, len(ev)))
    drop = np.zeros(len(ev), bool)
    drop[starts[(typ[starts] == _REJECT) & (size > 1)]] = True
    ev, typ, pair, oid, amount, price, reason = (
        a[~drop] for a in (ev, typ, pair, oid, amount, price, reason))
    starts = np.flatnonzero(_runs(pair, oid))
    n = len(ev)
    ends = np.append(starts[1:], n) if len(starts) else starts
    run = np.cumsum(_runs(pair, oid)) - 1
    at = np.arange(n)

    def last_of(mask: np.ndarray) -> np.ndarray:
        """Index of the run's last touch where mask holds, -1 when none."""
        if not n:
            return np.zeros(0, np.int64)
        return np.maximum.reduceat(np.where(mask, at, -1), starts)

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts) if n else np.zeros(0, np.int64)

    fills = typ == _FILL
    filled_qty = total(np.where(fills, amount, 0))
    filled_quote = total(np.where(fills, amount * price, 0))
    setter = last_of(_SETS_REMAINING[typ])
    minus = total(np.where(fills & (at > setter[run]), amount, 0))
    has_setter = setter >= 0
    remaining = np.where(has_setter, amount[setter] * (typ[setter] != _DONE), 0)
    by_status = last_of(_SETS_STATUS[typ])
    last_fill = last_of(fills)
    said = _STATUS_OF[typ[by_status]]
    status = np.where(by_status >= 0,
                      np.where((last_fill > by_status) & (said == NEW), PARTIALLY_FILLED, said),
                      np.where(last_fill >= 0, PARTIALLY_FILLED, NONE))
    exit_at = last_of(_EXITS[typ])
    no_reason = (exit_at < 0) | (typ[exit_at] == _DONE)
    by_price = last_of(_SETS_PRICE[typ])
    last_ev = ev[ends - 1]
    accepted_at = last_of(typ == _ACCEPT)
    accepted = accepted_at >= 0
    rejected = (typ[starts] == _REJECT) & (ends - starts == 1)
    update = ~accepted & ~rejected
    a_ev = ev[accepted_at]
    g = cols.fields
    head = starts
    base = [pair[head], oid[head], user]
    seq_last, ts_last = cols.seq[last_ev], cols.ts[last_ev]

    # Rows go out in the orders' primary-key order, (order_id, pair) since migration 0010:
    # a key above every stored one takes the b-tree's rightmost-leaf fast path. Runs are
    # sorted by (pair, order_id); with one pair (a backlog's batches) that is the same.
    if len(starts) and pair[starts[0]] != pair[starts[-1]]:
        by_key = np.lexsort((pair[head], oid[head]))
    else:
        by_key = None

    def table(names, types, values, nulls, mask):
        texts = [pair_texts if t == "text" and i == 0 else (STATUSES if t == "text" else None)
                 for i, t in enumerate(types)]
        rows = mask if by_key is None else by_key[mask[by_key]]
        return Table(names, types, [v[rows] for v in values],
                     [None if z is None else z[rows] for z in nulls], texts)

    zeros = np.zeros(len(starts), np.int64)
    yes = np.ones(len(starts), bool)
    new_orders = table(ORDER_COLUMNS, ORDER_TYPES, base + [
        g[a_ev, col("Accepted", "side")], g[a_ev, col("Accepted", "kind")],
        g[a_ev, col("Accepted", "tif")], price[by_price], g[a_ev, col("Accepted", "qty")],
        g[a_ev, col("Accepted", "quote_qty")], remaining - minus, filled_qty, filled_quote,
        status, reason[exit_at], cols.ts[a_ev], ts_last, seq_last],
        [None] * 13 + [no_reason, None, None, None], accepted)
    rejected_rows = table(ORDER_COLUMNS, ORDER_TYPES, base + [
        zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros, zeros,
        np.full(len(starts), REJECTED), reason[head], cols.ts[ev[head]], ts_last, seq_last],
        [None] * 3 + [yes] * 7 + [None] * 7, rejected)
    updates = table(UPDATE_COLUMNS, UPDATE_TYPES, base[:2] + [
        price[by_price], remaining, minus, filled_qty, filled_quote, status, reason[exit_at],
        ts_last, seq_last],
        [None, None, by_price < 0, ~has_setter, None, None, None, None, no_reason, None, None],
        update)
    return new_orders, rejected_rows, updates
