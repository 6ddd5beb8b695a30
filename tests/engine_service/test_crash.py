"""Exactly-once under SIGKILL: whatever moments the engine dies at, keel.events ends up
byte-identical to a clean run of the pure engine over the same input."""
from __future__ import annotations

import random
import threading
import time

from engine.service.tools import clean_run, produce_commands
from engine.workload import operations, to_commands

from .checks import (
    assert_depth_chain,
    assert_seq_contiguous,
    last_snapshot,
    published_events,
)
from .conftest import log_of, wait_for

ORDERS = 200_000
KILLS = 10


def test_sigkill_at_random_moments_publishes_exactly_the_clean_run(engine_env, spawn_engine):
    env = engine_env
    commands = list(to_commands(operations(ORDERS, seed=7), "BTCUSDT"))
    expected, final_hash = clean_run(env.markets, 0, commands, env.codec)

    # Input keeps arriving while the engine is killed and restarted.
    feeder = threading.Thread(target=produce_commands,
                              args=(env.settings, env.codec, 0, commands, 8_000))
    feeder.start()
    rng = random.Random(20261122)
    proc = spawn_engine("--partitions", "0")
    for _ in range(KILLS):
        # Kill while it is the primary and mid-stream, not while it is still starting.
        wait_for(lambda p=proc: "partition is primary" in log_of(p), 60, "the engine to go live",
                 every=0.05)
        time.sleep(rng.uniform(0.05, 1.5))
        proc.kill()
        proc.wait(10)
        proc = spawn_engine("--partitions", "0")
    feeder.join()

    wait_for(lambda: "partition is primary" in log_of(proc), 60, "the last engine to go live")
    wait_for(lambda: len(published_events(env, 0)) >= len(expected), 240,
             "the engine to publish every event", every=2)
    proc.terminate()
    assert proc.wait(30) == 0

    values = published_events(env, 0)
    assert_seq_contiguous(env, values)
    assert len(values) == len(expected)
    assert values == expected
    snap = last_snapshot(env, 0)
    assert snap.input_offset == ORDERS
    assert snap.state_hash == final_hash
    logs = "".join(log_of(p) for p in spawn_engine.procs)
    print(f"exposed-tail recoveries: {logs.count('caught up with the published tail')}")
    final_seq = {"BTCUSDT": env.codec.decode_event(values[-1]).seq}
    assert_depth_chain(env, 0, final_seq)
