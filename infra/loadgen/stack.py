"""The stack's own view during a load run, sampled about once a second: lag per stage
(the processes' gauges and every consumer group's committed lag), open WebSockets, and
per process its memory and CPU (percent of one core over the last sample; a process
counts with everything in its process group, as `keel up` starts each in its own, so the
broker and PostgreSQL's backends count under their service). The load generator counts
itself as `loadgen`: it shares the cores with what it measures."""
from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
WANTED = ("exchange_engine_consumer_lag", "keel_sink_lag_records",
          "exchange_ws_connections_active")


def group_cpu_seconds() -> dict[int, float]:
    """process group -> CPU seconds (user + system) of its live members, from /proc."""
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()   # after "pid (comm) "
        pgrp, utime, stime = int(fields[2]), int(fields[11]), int(fields[12])
        out[pgrp] = out.get(pgrp, 0.0) + (utime + stime) / TICKS
    return out


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

    def _cpu(self) -> dict[str, float]:
        """Percent of one core per process since the previous call ({} the first time)."""
        groups = group_cpu_seconds()
        now = time.monotonic()
        seconds = {name: groups.get(pid, 0.0) for name, pid in self.pids.items()}
        seconds["loadgen"] = time.process_time()
        out = {}
        if self.last is not None:
            then, before = self.last
            span = max(now - then, 1e-6)
            out = {name: round(100 * max(v - before.get(name, v), 0.0) / span, 1)
                   for name, v in seconds.items()}
        self.last = (now, seconds)
        return out

    def sample(self) -> dict:
        began = time.thread_time()
        try:
            return self._sample()
        finally:
            self.cpu_s += time.thread_time() - began

    def _sample(self) -> dict:
        from infra.commands.top import scrape, total

        out = {"lag": {}, "rss_mb": {}, "cpu_pct": self._cpu(), "ws_connections": None}
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
