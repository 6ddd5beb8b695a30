"""SIGTERM ends the engine even when its broker is gone.

The engine used to spend ~60 s in its shutdown snapshot (librdkafka's
send_offsets_to_transaction waits out the transaction timeout when no broker answers),
so a supervisor's stop turned into a kill. The bound asserted here is generous on
purpose: it tells "bounded" from "waits out a minute", not fast from slow.
"""
from __future__ import annotations

import signal
import subprocess
import time

from engine.service.tools import produce_commands
from engine.workload import operations, to_commands

from .checks import published_events
from .conftest import log_of, make_env, wait_for

EXIT_BOUND_S = 30.0     # the unbounded engine took ~62 s here


def _broker(directory):
    from infra.embedded import free_port
    from infra.embedded.kafka import spawn
    from infra.health import HealthCheck

    port = free_port()
    proc = spawn(port, directory / "kafka.log")
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not HealthCheck("kafka", bootstrap).run(timeout=1.0).ok:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise RuntimeError("tansu did not start")
        time.sleep(0.1)
    return proc, bootstrap


def test_sigterm_with_the_broker_gone_exits_without_the_shutdown_snapshot(tmp_path,
                                                                          spawn_engine):
    broker, bootstrap = _broker(tmp_path)
    try:
        env = make_env(bootstrap, tmp_path)
        produce_commands(env.settings, env.codec, 0,
                         to_commands(operations(2_000, seed=5), "BTCUSDT"), source=0)
        proc = spawn_engine("--partitions", "0", env=env)
        wait_for(lambda: "partition is primary" in log_of(proc), 60, "the engine to go live")
        # Input applied since the last snapshot: a clean stop would write one.
        wait_for(lambda: published_events(env, 0), 60, "the first events")
    finally:
        broker.terminate()
        broker.wait(10)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {EXIT_BOUND_S} s after SIGTERM") from None
    assert code == 0
    assert "broker unreachable: stopping without a shutdown snapshot" in log_of(proc)
