"""One process owning two partitions (one pair each): both publish exactly their clean
run, through a SIGKILL and a restart."""
from __future__ import annotations

import threading
import time

from engine.service.tools import clean_run, produce_commands
from engine.workload import operations, to_commands

from .checks import assert_depth_chain, assert_seq_contiguous, published_events
from .conftest import log_of, wait_for

PAIRS = {0: "BTCUSDT", 1: "ETHUSDT"}


def test_one_process_two_partitions_survives_a_kill(engine_env, spawn_engine):
    env = engine_env
    commands = {p: list(to_commands(operations(30_000, seed=29 + p), pair))
                for p, pair in PAIRS.items()}
    expected = {p: clean_run(env.markets, p, cmds, env.codec)[0] for p, cmds in commands.items()}
    feeders = [threading.Thread(target=produce_commands,
                                args=(env.settings, env.codec, p, cmds, 6_000))
               for p, cmds in commands.items()]
    for f in feeders:
        f.start()
    proc = spawn_engine("--partitions", "0,1")
    wait_for(lambda: log_of(proc).count("partition is primary") == 2, 60, "both partitions live",
             0.05)
    time.sleep(1.5)
    proc.kill()
    proc.wait(10)
    proc = spawn_engine("--partitions", "all")
    for f in feeders:
        f.join()
    for p in PAIRS:
        wait_for(lambda p=p: len(published_events(env, p)) >= len(expected[p]), 120,
                 f"partition {p} to publish everything")
    # Caught up on the long fetch wait, then went on with the short one
    # (engine.service.fetchwait): the switch loses nothing (checked below).
    wait_for(lambda: "consumer fetch wait switched" in log_of(proc), 60,
             "the switch to the live fetch wait")
    proc.terminate()
    assert proc.wait(30) == 0
    for p, pair in PAIRS.items():
        values = published_events(env, p)
        assert_seq_contiguous(env, values)
        assert values == expected[p]
        assert_depth_chain(env, p, {pair: env.codec.decode_event(values[-1]).seq})
