"""Hot standby: it takes over from a dead primary, and fences a frozen one (zombie)."""
from __future__ import annotations

import calendar
import json
import signal
import threading
import time

from engine.service.runner import EXIT_FENCED
from engine.service.tools import clean_run, produce_commands, read_partition
from engine.workload import operations, to_commands

from .checks import assert_depth_chain, assert_seq_contiguous, published_events
from .conftest import log_of, wait_for

ORDERS = 60_000
RATE = 6_000


def _start_pair(spawn_engine):
    primary = spawn_engine("--partitions", "0")
    wait_for(lambda: "partition is primary" in log_of(primary), 60, "the primary to go live", 0.05)
    standby = spawn_engine("--partitions", "0", "--standby")
    wait_for(lambda: "starting as standby" in log_of(standby), 60, "the standby to start", 0.05)
    return primary, standby


def _logged_at(log: str, msg: str) -> float:
    """Wall time of the first JSON log line with this message."""
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == msg:
            stamp = json.loads(line)["ts"]
            return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                stamp[19:-1] or 0)
    raise AssertionError(f"{msg!r} not logged")


def _check_clean(env, expected):
    wait_for(lambda: len(published_events(env, 0)) >= len(expected), 180,
             "every event to be published", every=1)
    values = published_events(env, 0)
    assert_seq_contiguous(env, values)
    assert values == expected
    assert_depth_chain(env, 0, {"BTCUSDT": env.codec.decode_event(values[-1]).seq})


def test_standby_takes_over_from_a_killed_primary(engine_env, spawn_engine):
    env = engine_env
    commands = list(to_commands(operations(ORDERS, seed=11), "BTCUSDT"))
    expected, _ = clean_run(env.markets, 0, commands, env.codec)
    feeder = threading.Thread(target=produce_commands,
                              args=(env.settings, env.codec, 0, commands, RATE))
    feeder.start()
    primary, standby = _start_pair(spawn_engine)
    time.sleep(2.0)
    killed_at = time.time()
    primary.kill()
    primary.wait(10)
    wait_for(lambda: "partition is primary" in log_of(standby), 60, "the standby to take over",
             0.05)
    feeder.join()
    _check_clean(env, expected)
    live_at = _logged_at(log_of(standby), "partition is primary")
    after = [m.timestamp()[1] / 1000 for m in read_partition(
        env.settings, env.settings.topic("events"), 0) if m.timestamp()[1] / 1000 >= live_at]
    print(f"failover: standby live {live_at - killed_at:.3f}s after kill -9, "
          f"first new event at {min(after) - killed_at:.3f}s")
    standby.terminate()
    assert standby.wait(30) == 0


def test_frozen_primary_is_fenced_when_it_wakes(engine_env, spawn_engine):
    env = engine_env
    commands = list(to_commands(operations(ORDERS, seed=13), "BTCUSDT"))
    expected, _ = clean_run(env.markets, 0, commands, env.codec)
    feeder = threading.Thread(target=produce_commands,
                              args=(env.settings, env.codec, 0, commands, RATE))
    feeder.start()
    zombie, standby = _start_pair(spawn_engine)
    time.sleep(2.0)
    zombie.send_signal(signal.SIGSTOP)
    wait_for(lambda: "partition is primary" in log_of(standby), 60, "the standby to take over",
             0.05)
    time.sleep(1.0)
    zombie.send_signal(signal.SIGCONT)
    # Input keeps coming, so the woken primary tries to commit and learns it is fenced.
    assert zombie.wait(60) == EXIT_FENCED
    assert "fenced" in log_of(zombie)
    feeder.join()
    _check_clean(env, expected)
    standby.terminate()
    assert standby.wait(30) == 0


def test_a_second_plain_start_waits_as_standby_while_the_primary_beats(engine_env, spawn_engine):
    """What a supervisor restart looks like: no --standby, but a live primary exists."""
    env = engine_env
    # A generous silence limit: a starved CPU must not pass for a dead primary here.
    env.env["KEEL_ENGINE_TAKEOVER_MS"] = "5000"
    commands = list(to_commands(operations(20_000, seed=19), "BTCUSDT"))
    expected, _ = clean_run(env.markets, 0, commands, env.codec)
    first = spawn_engine("--partitions", "0")
    wait_for(lambda: "partition is primary" in log_of(first), 60, "the first to go live", 0.05)
    second = spawn_engine("--partitions", "0")
    wait_for(lambda: "starting as standby" in log_of(second), 60, "the second to wait", 0.05)
    produce_commands(env.settings, env.codec, 0, commands[:10_000])
    wait_for(lambda: len(published_events(env, 0)) >= 10_000, 120, "the first half")
    assert first.poll() is None                     # not fenced: nobody took over
    assert "partition is primary" not in log_of(second)
    first.terminate()                               # a clean stop: the standby takes over
    assert first.wait(30) == 0
    wait_for(lambda: "partition is primary" in log_of(second), 60, "the takeover", 0.05)
    produce_commands(env.settings, env.codec, 0, commands[10_000:])
    _check_clean(env, expected)
    second.terminate()
    assert second.wait(30) == 0
