"""Per-batch phase timings of run_batches, for finding where a request's latency goes.

Off unless KEEL_STREAMS_TRACE names a file: then every batch appends one JSON line with
the wall-clock time (ms since the batch opened) at which each phase ended, and for its
records the time from their producer's CreateTime to the stream receiving them. Costs a
`time.time()` per phase and per record when on, one global test when off.
"""
from __future__ import annotations

import json
import os
import time

_path = os.environ.get("KEEL_STREAMS_TRACE") or None
_marks: list = []          # (phase, wall time) of the batch in hand
_opened = 0.0


def enabled() -> bool:
    return _path is not None


def mark(phase: str) -> None:
    if _path is not None:
        _marks.append((phase, time.time()))


def opened() -> None:
    global _opened
    _opened = time.time()


def stamp(stream):
    """A stream processor that notes when each record reached the stream."""
    async def note(value):
        event = stream.current_event
        if event is not None:
            event.message.time_in = time.time()
        return value
    return note


def closed(events) -> None:
    """The batch committed: write its line and open the next."""
    global _opened
    if _path is None:
        return
    now = time.time()
    ins = [e.message.time_in for e in events if e.message.time_in is not None]
    lags = [e.message.time_in - e.message.timestamp for e in events
            if e.message.time_in is not None and e.message.timestamp]
    line = {"n": len(events), "open": round(_opened, 4)}
    if ins:
        line["first_in"] = round(1000 * (min(ins) - _opened), 2)
        line["last_in"] = round(1000 * (max(ins) - _opened), 2)
    if lags:
        lags.sort()
        line["produce_to_in_ms"] = [round(1000 * lags[0], 2), round(1000 * lags[len(lags) // 2], 2),
                                    round(1000 * lags[-1], 2)]
    for phase, at in _marks:
        line[phase] = round(1000 * (at - _opened), 2)
    _marks.clear()
    with open(_path, "a") as out:
        out.write(json.dumps(line) + "\n")
    _opened = now
