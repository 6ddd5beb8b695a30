"""Engine snapshots on keel.engine.snapshots: written in chunks, found from the end.

A snapshot (the keel.EngineSnapshot Avro record: engine.snapshot bytes, the next input
offset, the state hash) easily outgrows a broker's 1 MB message limit, so its encoded
bytes are cut into chunks. Each chunk is one record with headers naming the snapshot,
its index, the chunk count and the input offset; all chunks go in the transaction that
commits the input offset, so a committed snapshot is always complete. Recovery reads
backwards from the end of the engine's partition and takes the newest complete snapshot
whose input offset is at or before the committed one. (Keys differ per chunk index so
compaction keeps every chunk of the newest snapshot.)

The record's `snapshot` bytes hold the partition's whole state, versioned:

    version 0 (written before duplicates were dropped): engine.snapshot bytes as they are
        (b"KEEL", u16 version, ...); they restore with empty duplicate filters.
    version 1: b"KEELPART" u16 version=1, u32 length + engine.snapshot bytes, u32 count,
        then count records "<Iq" (residue, highest Place id seen from it) in ascending
        residue; restores with an empty keel-source map.
    version 2: version 1 with version=2, followed by u32 count, then count records "<Iq"
        (accounts partition, highest keel-source request offset seen from it on a
        command other than a Place) in ascending partition (engine.service.duplicates;
        an engine before that rule skipped Places counted theirs too, which is as safe
        but hashes differently). Little-endian throughout.

`state_hash` is the sha256 of those bytes, so it covers the filters too: it is
partition_hash() of the engine and its filters, not engine.state_hash(). An audit of a
snapshot written by an older engine compares the hash in that snapshot's own version
(legacy_hashes).
"""
from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from engine.service.duplicates import ORDER_ID_STRIDE
from engine.snapshot import MAGIC as ENGINE_MAGIC
from engine.snapshot import SnapshotError
from schemas.codec import Codec

SNAPSHOT_SCHEMA = "engine_snapshot"
STATE_MAGIC = b"KEELPART"
STATE_VERSION = 2
_STATE_HEAD = struct.Struct("<8sHI")
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<Iq")


def _entries(entries: list[tuple[int, int]]) -> bytes:
    return _COUNT.pack(len(entries)) + b"".join([_ENTRY.pack(k, v) for k, v in entries])


def pack_state(engine_bytes: bytes, high: list[tuple[int, int]],
               sources: list[tuple[int, int]], version: int = STATE_VERSION) -> bytes:
    """Partition state: engine snapshot bytes, the Place filter's (residue, highest id)
    and the keel-source filter's (accounts partition, highest offset) pairs, each sorted
    by its key. `version=1` (no source map) only to recompute an old snapshot's hash."""
    parts = [_STATE_HEAD.pack(STATE_MAGIC, version, len(engine_bytes)), engine_bytes,
             _entries(high)]
    if version >= 2:
        parts.append(_entries(sources))
    return b"".join(parts)


def _read_entries(data: bytes, pos: int, what: str, check) -> tuple[dict[int, int], int]:
    if pos + _COUNT.size > len(data):
        raise SnapshotError(f"truncated: partition state ends before its {what} count")
    (count,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    end = pos + count * _ENTRY.size
    if end > len(data):
        raise SnapshotError(f"partition state declares {count} {what} entries in "
                            f"{len(data) - pos} bytes")
    out: dict[int, int] = {}
    last = -1
    for key, value in _ENTRY.iter_unpack(data[pos:end]):
        if key <= last or not check(key, value):
            raise SnapshotError(f"{what} entry ({key}, {value}) is out of order or out "
                                "of range")
        out[key] = value
        last = key
    return out, end


def _place_entry(residue: int, oid: int) -> bool:
    return residue < ORDER_ID_STRIDE and oid % ORDER_ID_STRIDE == residue


def _source_entry(partition: int, offset: int) -> bool:
    return partition < ORDER_ID_STRIDE and offset >= 0


def unpack_state(data: bytes) -> tuple[bytes, dict[int, int], dict[int, int]]:
    """(engine snapshot bytes, residue -> highest Place id, accounts partition -> highest
    keel-source offset) of any version; the maps an older version lacks are empty."""
    data = bytes(data)
    if not data.startswith(STATE_MAGIC):
        if data.startswith(ENGINE_MAGIC):
            return data, {}, {}         # version 0: the engine alone, nothing dropped yet
        raise SnapshotError(f"partition state starts with {data[:8]!r}, neither "
                            f"{STATE_MAGIC!r} nor {ENGINE_MAGIC!r}")
    if len(data) < _STATE_HEAD.size:
        raise SnapshotError("truncated: partition state header")
    _, version, engine_len = _STATE_HEAD.unpack_from(data)
    if version not in (1, 2):
        raise SnapshotError(f"partition state version {version} is not supported "
                            f"(this engine reads 1 to {STATE_VERSION})")
    pos = _STATE_HEAD.size + engine_len
    if pos > len(data):
        raise SnapshotError("truncated: partition state ends inside the engine snapshot")
    high, pos = _read_entries(data, pos, "Place filter", _place_entry)
    sources: dict[int, int] = {}
    if version >= 2:
        sources, pos = _read_entries(data, pos, "keel-source filter", _source_entry)
    if pos != len(data):
        raise SnapshotError(f"partition state has {len(data) - pos} bytes after its "
                            "last entry")
    return data[_STATE_HEAD.size:_STATE_HEAD.size + engine_len], high, sources


def partition_hash(engine_bytes: bytes, high: list[tuple[int, int]],
                   sources: list[tuple[int, int]]) -> str:
    """The state hash a snapshot of this state carries."""
    return hashlib.sha256(pack_state(engine_bytes, high, sources)).hexdigest()


def legacy_hashes(engine_bytes: bytes, high: list[tuple[int, int]]) -> tuple[str, str]:
    """The hashes a version-1 and a version-0 snapshot of the same books carried: an
    older engine's snapshot is audited in its own format."""
    return (hashlib.sha256(pack_state(engine_bytes, high, [], version=1)).hexdigest(),
            hashlib.sha256(engine_bytes).hexdigest())


@dataclass(frozen=True)
class SnapshotRecord:
    partition: int
    input_offset: int
    snapshot: bytes
    state_hash: str
    created_ts: int


def chunk_records(codec: Codec, partition: int, input_offset: int, data: bytes,
                  state_hash: str, created_ts: int, chunk_bytes: int):
    """(key, value, headers) records for one snapshot, in chunk order."""
    blob = codec.encode(SNAPSHOT_SCHEMA, {
        "partition": partition, "input_offset": input_offset, "snapshot": data,
        "state_hash": state_hash, "created_ts": created_ts}, validate=False)
    sid = uuid.uuid4().hex[:16].encode()
    count = max(1, -(-len(blob) // chunk_bytes))
    for i in range(count):
        headers = [("snapshot", sid), ("chunk", str(i).encode()), ("chunks", str(count).encode()),
                   ("input_offset", str(input_offset).encode()),
                   ("state_hash", state_hash.encode())]
        yield (f"{partition}/{i}".encode(), blob[i * chunk_bytes:(i + 1) * chunk_bytes], headers)


def _headers(msg) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or ())}


@dataclass
class _Candidate:
    sid: bytes
    count: int
    input_offset: int
    chunks: dict[int, object]       # chunk index -> its message

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.count and set(self.chunks) == set(range(self.count))


def _candidates(messages) -> list[_Candidate]:
    found: dict[bytes, _Candidate] = {}
    for msg in messages:
        h = _headers(msg)
        try:
            sid, idx = h["snapshot"], int(h["chunk"])
            count, offset = int(h["chunks"]), int(h["input_offset"])
        except (KeyError, ValueError):
            continue        # not a chunked snapshot record: ignore it
        cand = found.setdefault(sid, _Candidate(sid, count, offset, {}))
        cand.chunks[idx] = msg
    return list(found.values())


@dataclass(frozen=True)
class SnapshotRef:
    """Where one complete snapshot lies in the log, without its bytes."""
    input_offset: int
    state_hash: str
    first: int          # log offsets of its first and last chunk
    last: int


def snapshot_index(reader, topic: str, partition: int) -> dict[int, SnapshotRef]:
    """input offset -> the last complete snapshot at that offset still in the log."""
    found: dict[bytes, _Candidate] = {}
    hashes: dict[bytes, str] = {}
    for msg in reader.stream(topic, partition, 0):
        h = _headers(msg)
        if "state_hash" in h:
            hashes[h.get("snapshot", b"")] = h["state_hash"].decode()
        for cand in _candidates([msg]):
            found.setdefault(cand.sid, _Candidate(cand.sid, cand.count, cand.input_offset, {}))
            # the chunk's log offset, not the message: the bytes are read back on demand
            found[cand.sid].chunks.update({i: msg.offset() for i in cand.chunks})
    return {c.input_offset: SnapshotRef(c.input_offset, hashes[c.sid], min(c.chunks.values()),
                                        max(c.chunks.values()))
            for c in found.values() if c.complete and c.sid in hashes}


def snapshot_hashes(reader, topic: str, partition: int) -> dict[int, str]:
    """input offset -> state hash of every complete snapshot still in the log."""
    return {offset: ref.state_hash
            for offset, ref in snapshot_index(reader, topic, partition).items()}


def read_snapshot(reader, codec: Codec, topic: str, partition: int,
                  ref: SnapshotRef) -> SnapshotRecord:
    """The snapshot `ref` points at (its chunks read back from the log)."""
    msgs = reader.read(topic, partition, ref.first, ref.last + 1)
    [cand] = [c for c in _candidates(msgs)
              if c.input_offset == ref.input_offset and c.complete
              and max(m.offset() for m in c.chunks.values()) == ref.last]
    rec = codec.decode(SNAPSHOT_SCHEMA, b"".join(cand.chunks[i].value()
                                                 for i in range(cand.count)))
    return SnapshotRecord(rec["partition"], rec["input_offset"], rec["snapshot"],
                          rec["state_hash"], rec["created_ts"])


def _last_snapshot(reader, topic: str, partition: int,
                   max_input_offset: int | None) -> _Candidate | None:
    """The usual case in O(1): the log ends with a snapshot's last chunk, and the chunks of
    one transaction sit at consecutive offsets, so its first chunk is count - 1 before."""
    last = reader.last(topic, partition)
    if last is None:
        return None
    [cand] = _candidates([last]) or [None]
    if cand is None or max(cand.chunks) != cand.count - 1 or (
            max_input_offset is not None and cand.input_offset > max_input_offset):
        return None
    first = last.offset() - (cand.count - 1)
    whole = [c for c in _candidates(reader.read(topic, partition, first, last.offset() + 1))
             if c.sid == cand.sid]
    return whole[0] if whole and whole[0].complete else None


def find_latest(reader, codec: Codec, topic: str, partition: int,
                max_input_offset: int | None = None) -> SnapshotRecord | None:
    """The newest complete snapshot with input_offset <= max_input_offset, or None.

    Usually the log ends with the wanted snapshot and only its chunks are read; otherwise
    a window at the end is read and widened until it holds a usable snapshot.
    """
    best = _last_snapshot(reader, topic, partition, max_input_offset)
    low, high = reader.watermarks(topic, partition)
    window = 64
    while best is None and high > low:
        start = max(low, high - window)
        usable = [c for c in _candidates(reader.read(topic, partition, start, high))
                  if c.complete and (max_input_offset is None or c.input_offset <= max_input_offset)]
        if usable:
            best = max(usable, key=lambda c: c.chunks[c.count - 1].offset())
            break
        if start == low:
            return None
        window *= 4
    if best is None:
        return None
    blob = b"".join(best.chunks[i].value() for i in range(best.count))
    rec = codec.decode(SNAPSHOT_SCHEMA, blob)
    return SnapshotRecord(rec["partition"], rec["input_offset"], rec["snapshot"],
                          rec["state_hash"], rec["created_ts"])
