"""Process settings of a streams worker that are not Faust's, applied by streams.app.configure.

Each was measured on the accounts worker with bench/streams.py (py-spy, gc.callbacks,
KEEL_STREAMS_TRACE); the environment can set the first two back.
- KEEL_STREAMS_SWITCH_INTERVAL_MS (default 0.5): three threads share the GIL (the agent's
  loop, Faust's aiokafka consumer thread, the thread waiting for librdkafka's flush). At
  Python's 5 ms a thread back from a round trip waited out the busy one's interval for
  each step (the flush returning, the commit's answer, each wake-up of the loop).
- KEEL_STREAMS_GC_THRESHOLD (default 20000,20,100): a worker holds every user's state
  (tens of thousands of dicts and lists) and makes a few Faust objects per record. With
  Python's (700, 10, 10) its collections paused the agent 114 times >= 0.5 ms in a 10 s
  run at 2,000 requests/s (bench/streams.py --only latency): 380 ms in all, a full
  collection up to 100 ms, each pause on every waiting request's latency. At (20000, 20,
  100): 7 such pauses, 31 ms in all, the longest 6 ms. Cyclic garbage still goes, later.
- No Faust Monitor (`Unmonitored`).
"""
from __future__ import annotations

import gc
import sys

import faust
from faust.sensors import Monitor, SensorDelegate

from infra.settings import Settings


class Unmonitored(SensorDelegate):
    """Faust's sensors without its Monitor, which no Keel process reads (the workers'
    metrics are streams.metrics' Prometheus counters). Faust calls the Monitor several
    times per record (in, out, acked, each table get and set): 2-3% of the accounts
    worker's CPU in py-spy profiles of bench/streams.py --only accounts."""

    def add(self, sensor) -> None:
        if not isinstance(sensor, Monitor):
            super().add(sensor)

    def on_rebalance_start(self, app) -> dict:
        # not empty: the app warns of "missing sensor state" at each rebalance otherwise
        return {None: None, **super().on_rebalance_start(app)}


def apply(app: faust.App, settings: Settings) -> None:
    """Call before the app's streams and tables are made (they bind its sensors)."""
    if not isinstance(app.sensors, Unmonitored):
        app.sensors = Unmonitored(app)
    extra = settings.extra
    sys.setswitchinterval(float(extra.get("KEEL_STREAMS_SWITCH_INTERVAL_MS", "0.5")) / 1000)
    gc.set_threshold(*(int(n) for n in extra.get("KEEL_STREAMS_GC_THRESHOLD",
                                                  "20000,20,100").split(",")))
