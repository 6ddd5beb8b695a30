"""infra.kafka.StableEnds: a read_committed reader's end from librdkafka's statistics."""
from __future__ import annotations

import json

from infra.kafka import StableEnds


def _stats(partitions: dict[str, dict]) -> str:
    return json.dumps({"name": "c#consumer-1", "topics": {"keel.events": {
        "topic": "keel.events", "partitions": partitions}}})


def test_the_last_stable_offset_bounds_the_end_below_an_open_transaction():
    ends = StableEnds()
    ends(_stats({"0": {"hi_offset": 12, "ls_offset": 9},
                 "1": {"hi_offset": 5, "ls_offset": 5},
                 "-1": {"hi_offset": -1, "ls_offset": 3}}))     # librdkafka's unassigned
    assert ends.end("keel.events", 0, 12) == 9
    assert ends.end("keel.events", 1, 5) == 5
    assert ends.end("keel.events", -1, 7) == 7


def test_without_statistics_the_high_watermark_is_the_end():
    ends = StableEnds()
    ends(_stats({"0": {"hi_offset": -1, "ls_offset": -1}}))     # nothing fetched yet
    assert ends.end("keel.events", 0, 4) == 4
    assert ends.end("keel.other", 2, 8) == 8


def test_a_stale_stable_offset_never_raises_the_end():
    ends = StableEnds()
    ends(_stats({"0": {"hi_offset": 20, "ls_offset": 20}}))
    # The cached high watermark came from an older fetch than the statistics.
    assert ends.end("keel.events", 0, 15) == 15
