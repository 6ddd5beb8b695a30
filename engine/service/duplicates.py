"""Dropping a command that keel.orders delivers twice, before it reaches a book.

A command can arrive twice on keel.orders: the embedded broker shows read_committed
readers the records of aborted or fenced transactions, and the accounts workers run
at-least-once, so after a crash they process a request again and write its command
again. Executing a copy is harmful for every kind: a Place trades twice (or, while the
first copy rests, is rejected DUPLICATE_ORDER_ID, which settlement reads as "release this
order's hold"); an Amend copied after a partial fill raises the remaining quantity back
up; a CancelAll copy cancels what the user placed between the two copies.

Two rules, both deterministic functions of the records in log order, split by kind:

- Place id (Places only). accounts numbers orders `(o + 1) * ORDER_ID_STRIDE + p`
  (streams/ledger.py), where p is its partition and o the offset of the request the
  order came from, so per residue `order_id % ORDER_ID_STRIDE` the ids rise too; a Place
  whose id is not above the highest one of its residue is dropped. Ids numbered 1, 2,
  3... (tests, benchmarks, the standard workload) rise in every residue and pass.
- keel-source (every other kind: Cancel, Amend, CancelAll, SetTrading). accounts puts a
  header `keel-source: b"<p>:<o>"` on every record it writes. It writes one command per
  request, in offset order, so from one accounts partition the offsets on any keel.orders
  partition only rise, and a copy carries the same o as its original. A command whose o
  is not above the highest one already seen from p on a command other than a Place is
  dropped. A header that is present but not of that form is a fault: the record goes to
  keel.dlq with the reason (guessing would either execute a copy or drop a command).

A Place's header is never read. For accounts' records that changes nothing: its id
encodes the same (p, o) as its header, so the id rule drops exactly the copies the header
rule would, and the non-Place offsets from p are a rising subsequence of all of them, so
the keel-source rule on that subsequence drops the same copies too. It saves reading and
parsing a header on most of the hot path's records (~70% of the standard workload are
Places). The consequences, by design: a Place with a malformed keel-source header (or
two of them, or an undecodable header key) is judged by its id like a headerless one and
is NOT dead-lettered; and a Place moves no keel-source high-water mark, so a writer that
gave a Place and a later non-Place the same header offset would see both execute.

The two high-water maps are engine state: they travel in the partition's snapshot
(engine.service.snapshots.pack_state) so that recovery, a standby and `keel replay`
drop exactly the same records as the live engine did.
"""
from __future__ import annotations

import logging

from engine.domain import Place, ResultCode
from engine.service.routing import Fault
from infra.logs import event

# Must equal streams.ledger.ORDER_ID_STRIDE (tests/engine_service/test_duplicates.py pins
# it); the engine may not import streams, whose code depends on the engine. It also bounds
# the accounts partitions a keel-source may name, so the source map stays small.
ORDER_ID_STRIDE = 4096
SOURCE_HEADER = "keel-source"
_MAX_OFFSET_DIGITS = 18         # below 2**63: the snapshot stores offsets as int64
_BAD_HEADER = int(ResultCode.INVALID_REQUEST)
_ABSENT = object()
# Accounts partitions as the header spells them: a dict lookup instead of parsing digits.
_PARTITIONS = {str(p).encode(): p for p in range(ORDER_ID_STRIDE)}


def parse_source(value) -> tuple[int, int] | str:
    """(accounts partition, request offset) of a keel-source header value, or why not.
    The filter inlines the usual case; this is the full check, with the reasons."""
    if not isinstance(value, bytes):
        return f"{SOURCE_HEADER} header has no bytes value ({value!r})"
    part, sep, offset = value.partition(b":")
    # bytes.isdigit() is ASCII-only: no sign, space, underscore or other script's digits.
    if not (sep and part.isdigit() and offset.isdigit()):
        return (f"{SOURCE_HEADER} header {value[:40]!r} is not "
                "b'<accounts partition>:<request offset>' in decimal digits")
    # Lengths first: int() of a few thousand digits raises.
    if len(part) > 4 or int(part) >= ORDER_ID_STRIDE:
        return (f"{SOURCE_HEADER} header {value[:40]!r}: the partition must be below "
                f"{ORDER_ID_STRIDE} (at most 4 digits)")
    if len(offset) > _MAX_OFFSET_DIGITS:
        return f"{SOURCE_HEADER} header {value[:40]!r}: the offset has over 18 digits"
    return int(part), int(offset)


def _header_fault(headers: list) -> Fault:
    values = [v for k, v in headers if k == SOURCE_HEADER]
    if len(values) > 1:
        return Fault(_BAD_HEADER, f"{len(values)} {SOURCE_HEADER} headers on one record")
    return Fault(_BAD_HEADER, str(parse_source(values[0])))


class _Headers:
    """A record's header list where admit() expects a Kafka message (clean runs)."""

    __slots__ = ("_headers",)

    def __init__(self, headers) -> None:
        self._headers = headers

    def headers(self):
        return self._headers


class DuplicateFilter:
    """The highest Place id per residue, and the highest keel-source request offset per
    accounts partition seen on the other kinds."""

    __slots__ = ("high", "sources", "dropped")

    def __init__(self, high: dict[int, int] | None = None,
                 sources: dict[int, int] | None = None) -> None:
        self.high: dict[int, int] = dict(high or {})        # residue -> highest Place id
        self.sources: dict[int, int] = dict(sources or {})  # accounts partition -> offset
        # (a version-2 snapshot written before Places skipped their header may hold a
        # Place's offset here: still at or below any later request's, so just as right)
        self.dropped = 0            # copies dropped since this filter was built

    def admit(self, cmd, msg):
        """True: execute `cmd`, read from Kafka message `msg`; False: a copy, drop it; a
        Fault: the record's keel-source header is malformed (keel.dlq; never for a Place).

        On every record of the engine's hot path, hence one flat function: a Place meets
        the id rule without touching its headers; for the other kinds the usual
        keel-source (one header, partition in canonical decimal) is checked inline and
        anything else takes parse_source() or _header_fault()."""
        if type(cmd) is Place:
            oid = cmd.order_id
            residue = oid % ORDER_ID_STRIDE
            last = self.high.get(residue)
            if last is not None and oid <= last:
                self.dropped += 1
                return False
            self.high[residue] = oid
            return True
        try:
            headers = msg.headers()
        except ValueError as exc:       # UnicodeDecodeError: a header key that is not UTF-8
            return Fault(_BAD_HEADER, f"undecodable record headers: {exc}")
        if headers is None:
            return True
        value = _ABSENT
        for key, val in headers:
            if key == SOURCE_HEADER:
                if value is not _ABSENT:
                    return _header_fault(headers)      # two of them: which one?
                value = val
        if value is _ABSENT:
            return True
        if type(value) is not bytes:
            return _header_fault(headers)
        part, _, offset = value.partition(b":")         # no b":": offset is b""
        part = _PARTITIONS.get(part)
        if part is not None and offset.isdigit() and len(offset) <= _MAX_OFFSET_DIGITS:
            offset = int(offset)
        else:
            source = parse_source(value)                # leading zeros, or a fault
            if type(source) is str:
                return Fault(_BAD_HEADER, source)
            part, offset = source
        last = self.sources.get(part)
        if last is not None and offset <= last:
            self.dropped += 1
            return False
        self.sources[part] = offset
        return True

    def check(self, cmd, headers):
        """admit() for a command and its record's header list (None: no headers)."""
        return self.admit(cmd, _Headers(headers))

    def items(self) -> list[tuple[int, int]]:
        """(residue, highest Place id) sorted by residue: the snapshot's canonical order."""
        return sorted(self.high.items())

    def source_items(self) -> list[tuple[int, int]]:
        """(accounts partition, highest request offset of a non-Place) sorted by partition."""
        return sorted(self.sources.items())


def report_dropped(log: logging.Logger, metrics, partition: int, dropped: list) -> None:
    """Count and log the (offset, command) copies one transaction dropped.

    Called after the commit: the drops are final only once their offsets are committed.
    Expected on the embedded broker after an accounts restart, hence one INFO line per
    transaction, not one per record."""
    metrics.duplicates.labels(partition).inc(len(dropped))
    kinds: dict[str, int] = {}
    for _, cmd in dropped:
        name = type(cmd).__name__
        kinds[name] = kinds.get(name, 0) + 1
    event(log, "dropped duplicate commands", partition=partition, count=len(dropped),
          offsets=[dropped[0][0], dropped[-1][0]], kinds=kinds,
          order_ids=[c.order_id for _, c in dropped if type(c) is Place][:5])
