"""The stack's own view during a load run, sampled about once a second: lag per stage
(the processes' gauges and every consumer group's committed lag), open WebSockets, and
per process its memory, its CPU and the time it waited runnable for a CPU (percent of
one core over the last sample; a process counts with everything in its process group,
as `keel up` starts each in its own, so the broker and PostgreSQL's backends count under
their service). The load generator counts
itself as `loadgen`: it shares the cores with what it measures."""
from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
WANTED = ("exchange_engine_consumer_lag", "keel_sink_lag_records",
          "exchange_ws_connections_active")


def group_times(groups: set[int]) -> dict[int, tuple[float, float]]:
    """process group -> (CPU seconds, seconds waited runnable for a CPU) of its live
    members, from /proc. The wait (schedstat, every thread) is what the machine's other
    load costs a process: a stage can be slow without being busy when it waits its turn."""
    out: dict[int, tuple[float, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) "
            pgrp = int(fields[2])
            if pgrp not in groups:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / TICKS
            waited = 0.0
            for task in os.scandir(f"/proc/{entry.name}/task"):
                waited += int(Path(f"{task.path}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        c, w = out.get(pgrp, (0.0, 0.0))
        out[pgrp] = (c + cpu, w + waited)
    return out


def own_times() -> tuple[float, float]:
    waited = 0.0
    for task in os.scandir("/proc/self/task"):
        try:
            waited += int(Path(f"{task.path}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return time.process_time(), waited


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class StackSampler:
    def __init__(self, state: dict | None, endpoints: dict[str, str], groups=None) -> None:
        self.pids = {name: info.get("pid") for name, info
                     in ((state or {}).get("processes") or {}).items() if info.get("pid")}
        self.endpoints = endpoints
        self.groups = groups
        self.last: tuple[float, dict[str, float]] | None = None
        self.cpu_s = 0.0             # this sampler's own CPU (the load generator's share)

    def _cpu(self) -> tuple[dict[str, float], dict[str, float]]:
        """Per process since the previous call ({} the first time), in percent of one
        core: CPU used, and time its threads waited runnable for a CPU."""
        groups = group_times(set(self.pids.values()))
        now = time.monotonic()
        seconds = {name: groups.get(pid, (0.0, 0.0)) for name, pid in self.pids.items()}
        seconds["loadgen"] = own_times()
        cpu, wait = {}, {}
        if self.last is not None:
            then, before = self.last
            span = max(now - then, 1e-6)
            for name, (c, w) in seconds.items():
                c0, w0 = before.get(name, (c, w))
                cpu[name] = round(100 * max(c - c0, 0.0) / span, 1)
                wait[name] = round(100 * max(w - w0, 0.0) / span, 1)
        self.last = (now, seconds)
        return cpu, wait

    def sample(self) -> dict:
        began = time.thread_time()
        try:
            return self._sample()
        finally:
            self.cpu_s += time.thread_time() - began

    def _sample(self) -> dict:
        from infra.commands.top import scrape, total

        cpu, wait = self._cpu()
        out = {"lag": {}, "rss_mb": {}, "cpu_pct": cpu, "runq_wait_pct": wait,
               "ws_connections": None}
        if self.groups is not None:
            out["lag"].update({f"group {g}": float(v) for g, v in self.groups.measure().items()})
        if self.endpoints:
            s, _errors = scrape(self.endpoints, timeout=1.0, only=WANTED)
            out["lag"]["engine"] = total(s, "exchange_engine_consumer_lag")
            for labels, v in s.get("keel_sink_lag_records", ()):
                key = f"sink-{labels['sink']}"
                out["lag"][key] = out["lag"].get(key, 0.0) + v
            if "exchange_ws_connections_active" in s:
                out["ws_connections"] = total(s, "exchange_ws_connections_active")
        for name, pid in self.pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                out["rss_mb"][name] = mb
        return out
