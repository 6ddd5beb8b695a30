"""The depth fast path: heads read in Python agree with the codec, and the container
ClickHouse reads holds exactly the records' bodies with their offsets."""
from __future__ import annotations

from fastavro import reader

from schemas.codec import Codec
from sinks.depth_avro import container, current_header, read_head
from tests.sinks.feed import depth_updates


def test_heads_and_container_round_trip():
    import io

    codec = Codec()
    depth = depth_updates(500)
    values = [codec.encode("depth_update", d) for d in depth]
    assert all(v[:10] == current_header() for v in values)
    for d, v in zip(depth, values, strict=True):
        assert read_head(v) == (d["pair"], d["first_update_id"], d["last_update_id"], d["ts"],
                                d["is_snapshot"])
    rows = list(reader(io.BytesIO(container([(1000 + i, v) for i, v in enumerate(values)]))))
    assert [r.pop("_offset") for r in rows] == list(range(1000, 1500))
    assert rows == depth
