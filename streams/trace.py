"""Per-batch phase timings of run_batches, for finding where a request's latency goes.

Off unless KEEL_STREAMS_TRACE names a file: then every batch appends one JSON line with
the wall-clock time (ms since the batch opened, i.e. since its worker asked for it) at
which each phase ended, and for its records the time from their producer's CreateTime to
the stream receiving them. Batches may overlap (streams.app pipelines accounts), so each
batch carries its own marks. Costs a `time.time()` per phase and per record when on, one
test when off.

Also here: the SIGUSR1 dump of a live worker's tasks and offset books (`install_dump`).
"""
from __future__ import annotations

import json
import os
import time

_path = os.environ.get("KEEL_STREAMS_TRACE") or None


def enabled() -> bool:
    return _path is not None


class Batch:
    """The marks of one batch (a no-op when tracing is off)."""

    __slots__ = ("opened", "marks")

    def __init__(self, opened: float | None = None) -> None:
        self.opened = opened if opened is not None else (time.time() if _path else 0.0)
        self.marks: list = []

    def mark(self, phase: str) -> None:
        if _path is not None:
            self.marks.append((phase, time.time()))

    def closed(self, events) -> None:
        """The batch committed: write its line."""
        if _path is None:
            return
        opened = self.opened
        # a lane's batch (streams.bulk) holds aiokafka records, which are not stamped
        messages = [e.message for e in events if hasattr(e, "message")]
        ins = [m.time_in for m in messages if m.time_in is not None]
        lags = [m.time_in - m.timestamp for m in messages
                if m.time_in is not None and m.timestamp]
        line = {"n": len(events), "open": round(opened, 4)}
        if ins:
            line["first_in"] = round(1000 * (min(ins) - opened), 2)
            line["last_in"] = round(1000 * (max(ins) - opened), 2)
        if lags:
            lags.sort()
            line["produce_to_in_ms"] = [round(1000 * lags[0], 2),
                                        round(1000 * lags[len(lags) // 2], 2),
                                        round(1000 * lags[-1], 2)]
        for phase, at in self.marks:
            line[phase] = round(1000 * (at - opened), 2)
        with open(_path, "a") as out:
            out.write(json.dumps(line) + "\n")


def stamp(stream):
    """A stream processor that notes when each record reached the stream."""
    async def note(value):
        event = stream.current_event
        if event is not None:
            event.message.time_in = time.time()
        return value
    return note


def install_dump(app) -> None:
    """SIGUSR1 writes every asyncio task's stack and the consumer's offset books to
    stderr: what an operator needs to see where a live worker waits."""
    import asyncio
    import signal
    import sys

    def dump() -> None:
        out = sys.stderr
        for task in asyncio.all_tasks():
            print(f"--- task {task.get_name()}", file=out)
            task.print_stack(limit=12, file=out)
        consumer = app.consumer
        for name in ("_committed_offset", "_read_offset", "_gap", "_active_partitions",
                     "_buffered_partitions", "_paused_partitions", "flow_active"):
            print(f"--- consumer.{name}: {getattr(consumer, name, None)}", file=out)
        for topic in app.topics:
            queue = getattr(topic, "_queue", None)
            if queue is not None:
                print(f"--- queue {topic}: size {queue.qsize()} pending "
                      f"{len(queue._pending_pressure_drop_callbacks)} "
                      f"high {queue.pressure_high_size} drop {queue.pressure_drop_size}",
                      file=out)
        acked = {tp: (len(v), min(v), max(v)) for tp, v in consumer._acked.items() if v}
        print(f"--- consumer._acked (n, min, max): {acked}", file=out)
        out.flush()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
