"""How the PostgreSQL sink cuts a batch into parts written side by side.

A unit is (pair, shard): the rows of one pair whose order id (a trade's: its trade id)
is `shard` modulo SHARDS. Units share no row, and each has its own watermark row in
`sink_progress` (shard 0 under the sink's own name, as before shards existed; shard s
under "<sink>/<s>"), locked and advanced in the transaction that writes the unit's
rows. A part is a group of units on one connection, in one transaction: one that
committed before a crash is dropped by its own watermarks on the replay while the
others are applied, so fills are still added exactly once.

Why within a pair: a backlog comes out of the consumer a partition (a pair) at a time
(librdkafka hands out one partition's fetched records before the next's), so batches
split by pair alone kept one PostgreSQL backend busy and the other idle.

SHARDS is fixed: a different count would read the same watermark rows as other slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sinks.copy_binary import Table
from sinks.event_columns import EventColumns
from sinks.order_columns import OrderTables, fresh

SHARDS = 2
BALANCE = 1.25         # heaviest part / an even share that needs no cut


def sink_name(sink: str, shard: int) -> str:
    """The `sink_progress.sink` of a shard's watermarks."""
    return sink if shard == 0 else f"{sink}/{shard}"


def shard_sinks(sink: str) -> list[str]:
    return [sink_name(sink, s) for s in range(SHARDS)]


def groups(cols: EventColumns, n: int) -> list[list[tuple[int, int]]]:
    """Up to n groups of units (pair code, shard) of the pairs in `cols` (one empty
    group for no events). Whole pairs while they spread evenly enough (two backends
    inserting into one pair's newest index pages get in each other's way); the busiest
    pairs are cut into their shards until the heaviest group is within BALANCE of an
    even share, or every pair is cut."""
    counts = np.bincount(cols.pair, minlength=len(cols.pairs))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    if n <= 1 or not present:
        return [[(c, s) for c in present for s in range(SHARDS)]]
    fair = counts.sum() / n
    for cut in range(len(present) + 1):
        units = ([([(c, s)], counts[c] / SHARDS) for c in present[:cut] for s in range(SHARDS)]
                 + [([(c, s) for s in range(SHARDS)], counts[c]) for c in present[cut:]])
        units.sort(key=lambda u: -u[1])
        load = [0.0] * min(n, len(units))
        out: list[list[tuple[int, int]]] = [[] for _ in load]
        for unit, weight in units:
            g = load.index(min(load))
            out[g] += unit
            load[g] += weight
        if max(load) <= BALANCE * fair or len(units) >= n * SHARDS:
            break
    return out


def _wanted(units: list[tuple[int, int]], n_pairs: int) -> np.ndarray:
    want = np.zeros((max(1, n_pairs), SHARDS), bool)
    for code, shard in units:
        want[code, shard] = True
    return want


def _rows_of(table: Table, want: np.ndarray) -> Table:
    """Rows of `table` (pair code first, the order or trade id second) in `want`."""
    if not len(table):
        return table
    return table.take(want[table.values[0], table.values[1] % SHARDS])


def select(tables: OrderTables, units: list[tuple[int, int]], n_pairs: int) -> OrderTables:
    """The rows of `units` (pair codes as in the columns the tables were folded from)."""
    want = _wanted(units, n_pairs)
    return OrderTables(*(_rows_of(t, want) for t in
                         (tables.trades, tables.new_orders, tables.rejected, tables.updates)))


def concat(parts: list[OrderTables]) -> OrderTables:
    """Tables one after another (same pair codes, same layouts)."""
    if len(parts) == 1:
        return parts[0]

    def cat(tables: list[Table]) -> Table:
        first = tables[0]
        nulls = [None if z is None else np.concatenate([t.nulls[i] for t in tables])
                 for i, z in enumerate(first.nulls)]
        return Table(first.names, first.types,
                     [np.concatenate([t.values[i] for t in tables])
                      for i in range(len(first.values))], nulls, first.texts)
    return OrderTables(*(cat([getattr(p, name) for p in parts]) for name in
                         ("trades", "new_orders", "rejected", "updates")))


@dataclass
class View:
    """One shard's units of a part, under their watermarks."""
    shard: int
    units: list[tuple[int, int]]   # (pair code, shard)
    rows: np.ndarray               # which of the part's events are of these pairs
    events: EventColumns
    keep: np.ndarray               # of `events`: to apply
    last: dict[str, int]           # pair -> its new watermark
    gaps: list


def fresh_units(cols: EventColumns, units: list[tuple[str, int]],
                marks: dict[tuple[str, int], int]) -> list[View]:
    """The part's events as each of its shards sees them (fresh() under that shard's
    watermarks), shard by shard."""
    by_shard: dict[int, list[str]] = {}
    for pair, shard in units:
        by_shard.setdefault(shard, []).append(pair)
    views = []
    for shard, names in sorted(by_shard.items()):
        codes = [cols.pairs.index(n) for n in names]
        rows = np.isin(cols.pair, codes)
        events = cols if rows.all() else cols.take(rows)
        keep, last, gaps = fresh(events, {p: marks[(p, shard)] for p in names})
        views.append(View(shard, [(c, shard) for c in codes], rows, events, keep, last,
                          gaps))
    return views


def seen(views: list[View]) -> dict[str, np.ndarray]:
    """pair -> [which of its events some shard applied, which some shard dropped]."""
    out: dict[str, np.ndarray] = {}
    for v in views:
        for code in np.unique(v.events.pair).tolist():
            got = v.keep[v.events.pair == code]
            both = np.stack([got, ~got])
            name = v.events.pairs[code]
            out[name] = out[name] | both if name in out else both
    return out
