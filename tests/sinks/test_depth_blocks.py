"""Level arrays written in more than one block (valid Avro, though writers make one):
read as the codec reads them, alone and beside records of one block each."""
from __future__ import annotations

from schemas.codec import Codec
from schemas.varint import zigzag
from sinks import depth_columns
from sinks.depth_native import current_header
from tests.sinks.feed import depth_updates


def _in_blocks(codec: Codec, d: dict) -> bytes:
    """d with each side written one level a block."""
    head = codec.encode("depth_update", {**d, "bids": [], "asks": []})[:-2]

    def side(levels):
        return b"".join(zigzag(1) + zigzag(lv["price"]) + zigzag(lv["qty"]) for lv in levels) + b"\0"
    return head + side(d["bids"]) + side(d["asks"])


def _sides(heads, i):
    cut = [0, *heads.bids.count.cumsum().tolist()]
    ask = [0, *heads.asks.count.cumsum().tolist()]
    return (list(zip(heads.bids.price[cut[i]:cut[i + 1]].tolist(),
                     heads.bids.qty[cut[i]:cut[i + 1]].tolist(), strict=True)),
            list(zip(heads.asks.price[ask[i]:ask[i + 1]].tolist(),
                     heads.asks.qty[ask[i]:ask[i + 1]].tolist(), strict=True)))


def test_levels_in_many_blocks_read_as_the_codec_reads_them():
    codec = Codec()
    depth = [d for d in depth_updates(400, seed=17) if len(d["bids"]) > 1][:60]
    values = [_in_blocks(codec, d) if i % 3 else codec.encode("depth_update", d)
              for i, d in enumerate(depth)]
    for batch in (values, [v for i, v in enumerate(values) if i % 3]):
        heads = depth_columns.read(batch, current_header())
        assert heads.index.tolist() == list(range(len(batch)))
        for i, value in enumerate(batch):
            d = codec.decode("depth_update", value)
            assert _sides(heads, i) == ([(lv["price"], lv["qty"]) for lv in d["bids"]],
                                        [(lv["price"], lv["qty"]) for lv in d["asks"]])
