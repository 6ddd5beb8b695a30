"""Rebuild one partition's books from keel.orders into a fresh engine, and optionally
check that keel.events holds exactly what that replay produces.

Determinism makes this an audit: the same input must give byte-identical events and the
same state hash at every snapshot the live engine wrote along the way.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field

from engine.engine import Engine
from engine.markets import MarketsConfig
from engine.service.config import group_id
from engine.service.duplicates import SOURCE_HEADER, DuplicateFilter, parse_source
from engine.service.reader import LogReader
from engine.service.routing import Fault, Router
from engine.service.snapshots import (
    SnapshotRef,
    find_latest,
    legacy_hashes,
    partition_hash,
    read_snapshot,
    snapshot_index,
    unpack_state,
)
from engine.snapshot import SnapshotError
from schemas.codec import Codec, CodecError


@dataclass
class ReplayReport:
    partition: int
    start: int                      # first input offset whose events are compared
    end: int                        # input offset after the last one applied
    loaded_snapshot: int | None     # input offset of the snapshot it started from
    applied: int = 0
    events: int = 0
    duplicates: int = 0             # commands dropped as copies (engine.service.duplicates)
    state_hash: str = ""
    snapshots_checked: int = 0
    mismatch: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatch is None


def _describe(codec: Codec, data: bytes | None) -> str:
    if data is None:
        return "nothing (keel.events ends here)"
    try:
        return repr(codec.decode_event(data))
    except CodecError as exc:
        return f"undecodable ({exc}): {data[:40].hex()}"


def replay(settings, markets: MarketsConfig, partition: int, start: int = 0,
           end: int | None = None, compare: bool = False, progress: bool = True,
           impl: str = "auto") -> ReplayReport:
    topic = settings.topic
    codec = Codec.from_settings(settings)
    router = Router(codec, markets, partition)
    # The engine's group id, only to read its committed offset (this reader never commits).
    reader = LogReader(settings, group_id(settings.topic_prefix), "keel-replay")
    pairs = markets.pairs_on(partition)
    audit = None
    try:
        _, high = reader.watermarks(topic("orders"), partition)
        done = reader.committed(topic("orders"), partition)
        # By default audit what the engine has committed; input past it is not published yet.
        end = min(done, high) if end is None else min(end, high)
        snap = find_latest(reader, codec, topic("engine.snapshots"), partition, start) \
            if start > 0 else None
        if snap is not None:
            engine_bytes, high, sources = unpack_state(snap.snapshot)
            engine = Engine.restore(pairs, engine_bytes, impl)
            duplicates = DuplicateFilter(high, sources)
            pos = snap.input_offset
        else:
            engine, duplicates, pos = Engine(pairs, impl), DuplicateFilter(), 0
        report = ReplayReport(partition, start, end, None if snap is None else pos)
        if compare and end > done:
            report.notes.append(f"--to {end} is past the engine's committed offset {done}: "
                                "events for the rest are not published yet")
        books = {pair: engine.book(pair) for pair in engine.pairs()}
        admit = duplicates.admit            # the live engine's duplicate rules, replayed
        checks = snapshot_index(reader, topic("engine.snapshots"), partition) if compare else {}
        # Its own reader: the main one is busy streaming keel.orders.
        audit = _Audit(report, lambda: LogReader(settings, group_id(settings.topic_prefix),
                                                 "keel-replay-snapshots"),
                       codec, topic("engine.snapshots"), partition, dict(duplicates.sources))

        # Events published before `start`: each pair's seq there tells where to look.
        expected: list[bytes] = []
        wire = router.wire
        bar = _bar(end - pos, progress)
        offset = pos
        seq_at_start: dict[str, int] | None = None
        for msg in reader.stream(topic("orders"), partition, pos, end):
            offset = msg.offset()
            if seq_at_start is None and offset >= start:
                seq_at_start = {p: b.seq for p, b in books.items()}
            if compare and offset in checks:
                report.snapshots_checked += audit.check(engine, duplicates, checks[offset])
            cmd = router.route(msg.value())
            if compare and type(cmd) is not Fault:
                audit.note_source(msg)
            if type(cmd) is not Fault and admit(cmd, msg) is True:
                evs = books[cmd.pair].apply(cmd)
                if offset >= start:
                    expected += [wire.encode_event(ev) for ev in evs]
            report.applied += 1
            bar.update(1)
        bar.close()
        if seq_at_start is None:
            seq_at_start = {p: b.seq for p, b in books.items()}
        if compare and end in checks:
            report.snapshots_checked += audit.check(engine, duplicates, checks[end])
        report.events = len(expected)
        report.duplicates = duplicates.dropped
        report.state_hash = partition_hash(engine.snapshot(), duplicates.items(),
                                           duplicates.source_items())
        if compare and report.mismatch is None:
            _compare_events(reader, codec, topic("events"), partition, seq_at_start,
                            expected, report, progress)
        return report
    finally:
        reader.close()
        if audit is not None:
            audit.close()


class _Audit:
    """Checks the replayed state against each engine snapshot in the range.

    A version-2 snapshot does not always hash like the replay: an engine from before
    Places stopped moving keel-source marks (engine.service.duplicates) counted a Place's
    header offset in its source map, and an engine restored from such a snapshot carries
    those marks on. Both drop exactly the copies the current rule drops, so such a
    snapshot is a match when its books and Place filter are byte-equal to the replay's
    and each source mark lies between the current rule's and the old rule's (every
    command's offset counted), which this audit tracks alongside.
    """

    def __init__(self, report: ReplayReport, open_reader, codec: Codec, topic: str,
                 partition: int, sources: dict[int, int]) -> None:
        self.report, self.open_reader, self.codec = report, open_reader, codec
        self.topic, self.partition = topic, partition
        self.every_kind = sources       # accounts partition -> highest offset, any command
        self.reader = None              # opened at the first snapshot read back

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def note_source(self, msg) -> None:
        try:
            values = [v for k, v in msg.headers() or () if k == SOURCE_HEADER]
        except ValueError:
            return                      # undecodable headers: the old rule moved no mark
        if len(values) == 1:
            source = parse_source(values[0])
            if type(source) is tuple:
                part, offset = source
                if offset > self.every_kind.get(part, -1):
                    self.every_kind[part] = offset

    def check(self, engine: Engine, duplicates: DuplicateFilter, ref: SnapshotRef) -> int:
        report, want = self.report, ref.state_hash
        engine_bytes = engine.snapshot()
        got = partition_hash(engine_bytes, duplicates.items(), duplicates.source_items())
        if got != want and want in legacy_hashes(engine_bytes, duplicates.items()):
            got = want      # an older engine's snapshot: its hash covers less of the state
        if got != want:
            self.reader = self.reader or self.open_reader()
            snap = read_snapshot(self.reader, self.codec, self.topic, self.partition, ref)
            if hashlib.sha256(snap.snapshot).hexdigest() == want and same_decisions(
                    snap.snapshot, engine_bytes, duplicates.high, duplicates.sources,
                    self.every_kind):
                got = want
                report.notes.append(f"snapshot at input offset {ref.input_offset} counts "
                                    "Places in its keel-source marks (an engine before "
                                    "9cf2f45): books and Place filter equal, marks in range")
        if got != want and report.mismatch is None:
            report.mismatch = (f"state hash at input offset {ref.input_offset}: replay {got}, "
                               f"the engine's snapshot {want}")
        return 1


def same_decisions(state: bytes, engine_bytes: bytes, high: dict[int, int],
                   sources: dict[int, int], every_kind: dict[int, int]) -> bool:
    """Whether a snapshot's partition state equals the replay's up to keel-source marks an
    engine of the old rule (Places counted) may hold: books and Place filter byte-equal,
    and for each accounts partition the replay's mark <= the snapshot's <= the highest
    offset of any command (absent: -1)."""
    try:
        snap_engine, snap_high, snap_sources = unpack_state(state)
    except SnapshotError:
        return False
    if snap_engine != engine_bytes or snap_high != high:
        return False
    return all(sources.get(p, -1) <= snap_sources.get(p, -1) <= every_kind.get(p, -1)
               for p in set(sources) | set(snap_sources))


def _compare_events(reader, codec, topic, partition, seq_at_start, expected, report,
                    progress) -> None:
    # Every earlier event takes at least one offset, so the first expected one sits at or
    # after the sum of the seqs already used: start reading there.
    lower = sum(seq_at_start.values())
    i = 0
    bar = _bar(len(expected), progress)
    for msg in reader.stream(topic, partition, lower):
        if i == len(expected):
            break
        data = msg.value()
        try:
            ev = codec.decode_event(data)
        except CodecError:
            ev = None
        if ev is not None and ev.seq <= seq_at_start.get(ev.pair, 0):
            continue            # published before the compared range
        if data != expected[i]:
            report.mismatch = (f"event #{i} of the range (keel.events offset {msg.offset()}): "
                               f"replay {_describe(codec, expected[i])}, "
                               f"published {_describe(codec, data)}")
            return
        i += 1
        bar.update(1)
    bar.close()
    if i < len(expected):
        report.mismatch = (f"keel.events holds {i} of the {len(expected)} events; the first "
                           f"missing is {_describe(codec, expected[i])}")


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", disable=not enabled, file=sys.stderr,
                mininterval=0.5, leave=False)
