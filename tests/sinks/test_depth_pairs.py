"""Pair names in the depth read: short names read a word at a time, longer ones by the
byte matrix, any mix of them in one batch, each the codec's name; a name not all ASCII
sends its record to the codec."""
from __future__ import annotations

import pytest

from schemas.codec import Codec
from sinks import depth_columns
from sinks.depth_native import current_header
from tests.sinks.feed import depth_updates
from tests.sinks.test_depth_native import reader  # noqa: F401 - a fixture

NAMES = ["", "A", "A\0", "BTCUSDT", "ETHUSDT", "XUSDT", "DOGEUSDT", "ABCDEFGHIJKLM"]


@pytest.mark.usefixtures("reader")
@pytest.mark.parametrize("names", [NAMES[3:4], NAMES[:6], NAMES, ["BTCUSDT", "ÉTHUSDT"],
                                   ["ÉTH", "BTCUSDT", "DOGEUSDT"]],
                         ids=["one", "short", "mixed", "non-ascii", "non-ascii-long"])
def test_pair_names_read_as_the_codec_reads_them(names):
    codec = Codec()
    depth = depth_updates(len(names) * 40, seed=31)
    for i, d in enumerate(depth):
        d["pair"] = names[(i * 7) % len(names)]
    values = [codec.encode("depth_update", d) for d in depth]
    heads = depth_columns.read(values, current_header())
    accepted = [i for i, d in enumerate(depth) if d["pair"].isascii()]
    assert heads.index.tolist() == accepted
    assert [heads.pairs[c] for c in heads.pair.tolist()] == [depth[i]["pair"] for i in accepted]
    assert len(set(heads.pairs)) == len(heads.pairs)
