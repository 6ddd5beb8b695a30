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

    version 0 (written before duplicate Places were dropped): engine.snapshot bytes as
        they are (b"KEEL", u16 version, ...); they restore with an empty Place filter.
    version 1: b"KEELPART" u16 version=1, u32 length + engine.snapshot bytes, u32 count,
        then count records "<Iq" (residue, highest Place id seen from it) in ascending
        residue (engine.service.duplicates). Little-endian.

`state_hash` is the sha256 of those bytes, so for version 1 it covers the filter too: it
is no longer engine.state_hash() but partition_hash() of the engine and its filter.
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
STATE_VERSION = 1
_STATE_HEAD = struct.Struct("<8sHI")
_COUNT = struct.Struct("<I")
_HIGH = struct.Struct("<Iq")


def pack_state(engine_bytes: bytes, high: list[tuple[int, int]]) -> bytes:
    """Version-1 partition state: engine snapshot bytes and the Place filter's
    (residue, highest id) pairs, which must come sorted by residue."""
    return b"".join((_STATE_HEAD.pack(STATE_MAGIC, STATE_VERSION, len(engine_bytes)),
                     engine_bytes, _COUNT.pack(len(high)),
                     b"".join([_HIGH.pack(r, oid) for r, oid in high])))


def unpack_state(data: bytes) -> tuple[bytes, dict[int, int]]:
    """(engine snapshot bytes, residue -> highest Place id) of either version."""
    data = bytes(data)
    if not data.startswith(STATE_MAGIC):
        if data.startswith(ENGINE_MAGIC):
            return data, {}             # version 0: the engine alone, nothing dropped yet
        raise SnapshotError(f"partition state starts with {data[:8]!r}, neither "
                            f"{STATE_MAGIC!r} nor {ENGINE_MAGIC!r}")
    if len(data) < _STATE_HEAD.size:
        raise SnapshotError("truncated: partition state header")
    _, version, engine_len = _STATE_HEAD.unpack_from(data)
    if version != STATE_VERSION:
        raise SnapshotError(f"partition state version {version} is not supported "
                            f"(this engine reads {STATE_VERSION})")
    pos = _STATE_HEAD.size + engine_len
    if pos + _COUNT.size > len(data):
        raise SnapshotError("truncated: partition state ends inside the engine snapshot")
    (count,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    if pos + count * _HIGH.size != len(data):
        raise SnapshotError(f"partition state declares {count} Place filter entries in "
                            f"{len(data) - pos} bytes")
    high: dict[int, int] = {}
    last = -1
    for residue, oid in _HIGH.iter_unpack(data[pos:]):
        if residue <= last or residue >= ORDER_ID_STRIDE or oid % ORDER_ID_STRIDE != residue:
            raise SnapshotError(f"Place filter entry ({residue}, {oid}) is out of order or "
                                "not of its residue")
        high[residue] = oid
        last = residue
    return data[_STATE_HEAD.size:_STATE_HEAD.size + engine_len], high


def partition_hash(engine_bytes: bytes, high: list[tuple[int, int]]) -> str:
    """The state hash a version-1 snapshot of this state carries."""
    return hashlib.sha256(pack_state(engine_bytes, high)).hexdigest()


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


def snapshot_hashes(reader, topic: str, partition: int) -> dict[int, str]:
    """input offset -> state hash of every complete snapshot still in the log."""
    found: dict[bytes, _Candidate] = {}
    hashes: dict[bytes, str] = {}
    for msg in reader.stream(topic, partition, 0):
        h = _headers(msg)
        if "state_hash" in h:
            hashes[h.get("snapshot", b"")] = h["state_hash"].decode()
        for cand in _candidates([msg]):
            found.setdefault(cand.sid, _Candidate(cand.sid, cand.count, cand.input_offset, {}))
            found[cand.sid].chunks.update(dict.fromkeys(cand.chunks))   # not the values
    return {c.input_offset: hashes[c.sid] for c in found.values()
            if c.complete and c.sid in hashes}


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
