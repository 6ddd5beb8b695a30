"""`keel replay --compare` across version-2 snapshots an older engine wrote.

Until 9cf2f45 the engine read keel-source on Places too, so the source map in its
version-2 snapshots counted Places' offsets; an engine restored from one carries those
marks on. Both rules drop the same copies of accounts' records, so the events match, but
the snapshots hash differently from a replay under today's rule: replay called that a
mismatch. Here a log is written by an engine running the old rule (the rule patched in,
in-process) and then by today's engine restored from its snapshot, and replay must pass
it; a snapshot whose marks the old rule cannot explain must still fail.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

from engine.domain import Place
from engine.service.duplicates import SOURCE_HEADER, DuplicateFilter, parse_source
from engine.service.replay import same_decisions
from engine.service.snapshots import pack_state
from engine.service.tools import produce_values
from engine.workload import operations, to_commands

from .conftest import REPO, make_env, wait_for

HALF = 8_000


def _old_rule(current_admit):
    """The 08a936e rule: keel-source first on every kind (a Place's offset moves the
    mark), then the Place id rule."""
    def admit(self, cmd, msg):
        if type(cmd) is not Place:
            return current_admit(self, cmd, msg)
        for key, value in msg.headers() or ():
            if key == SOURCE_HEADER:
                part, offset = parse_source(value)
                last = self.sources.get(part)
                if last is not None and offset <= last:
                    self.dropped += 1
                    return False
                self.sources[part] = offset
        return current_admit(self, cmd, msg)
    return admit


def _feed(env, commands, first: int) -> None:
    """Commands as accounts partition 0 writes them: keel-source offsets rising."""
    produce_values(env.settings, env.settings.topic("orders"), 0, (
        (c.pair.encode(), env.codec.encode_command(c),
         [(SOURCE_HEADER, f"0:{first + i}".encode())]) for i, c in enumerate(commands)))


def _run_until(env, offset: int) -> None:
    from engine.service.runner import EngineService

    service = EngineService(env.settings, env.markets, [0])
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: (w := service.workers.get(0)) is not None and w.next_offset >= offset,
                 120, f"the engine to apply input up to {offset}", every=0.05)
    finally:
        service.stop()          # a clean stop writes a snapshot at `offset`
        thread.join(60)
        gc.unfreeze()           # the service froze this test process's objects
    assert not thread.is_alive()


def test_replay_passes_snapshots_of_the_old_keel_source_rule(kafka_bootstrap, tmp_path,
                                                              monkeypatch):
    env = make_env(kafka_bootstrap, tmp_path, KEEL_ENGINE_SNAPSHOT_EVERY="2500",
                   KEEL_ENGINE_MAX_BATCH="500")
    commands = list(to_commands(operations(2 * HALF, seed=29), "BTCUSDT"))
    _feed(env, commands[:HALF], 0)
    with monkeypatch.context() as patch:
        patch.setattr(DuplicateFilter, "admit", _old_rule(DuplicateFilter.admit))
        _run_until(env, HALF)
    _feed(env, commands[HALF:], HALF)
    _run_until(env, 2 * HALF)

    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--no-progress", "--partition", "0",
         "--compare"], cwd=REPO, env={**os.environ, **env.env}, capture_output=True,
        text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MATCH" in out.stdout
    assert int(out.stdout.split("snapshots checked: ")[1].split()[0]) >= 5
    # The old engine's snapshots were told apart (not waved through by the hash).
    assert "counts Places in its keel-source marks" in out.stdout


def test_same_decisions_needs_equal_books_and_marks_the_old_rule_explains():
    books = b"KEEL-books"
    high = {1: 4097}
    state = pack_state(books, sorted(high.items()), [(0, 7)])
    # today's rule saw a non-Place at 5; every kind counted, offsets went up to 9
    assert same_decisions(state, books, high, {0: 5}, {0: 9})
    assert same_decisions(state, books, high, {0: 7}, {0: 7})
    assert not same_decisions(state, books, high, {0: 8}, {0: 9})    # below today's mark
    assert not same_decisions(state, books, high, {0: 5}, {0: 6})    # above any offset seen
    assert not same_decisions(state, b"KEEL-other", high, {0: 5}, {0: 9})
    assert not same_decisions(state, books, {1: 8193}, {0: 5}, {0: 9})
    assert not same_decisions(state, books, high, {0: 5, 3: 1}, {0: 9, 3: 1})  # mark lost
    assert not same_decisions(b"garbage", books, high, {0: 5}, {0: 9})
