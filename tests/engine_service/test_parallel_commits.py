"""The runner steps the primaries a batch touched side by side (engine.service.runner
_step_all): each partition's transaction waits on the broker in its own thread, so one
partition's orders no longer wait out the other partitions' commits. Scheduling logic
only, with stand-in workers (the Kafka path is the other tests' business: two partitions
through a kill in test_two_partitions)."""
from __future__ import annotations

import threading

import pytest

from engine.service.outcome import Fenced, TransactionFailed
from engine.service.partition import Role
from engine.service.runner import EngineService


class StandIn:
    def __init__(self, partition: int, role: Role = Role.PRIMARY, step=None) -> None:
        self.partition = partition
        self.role = role
        self.pending = []
        self.steps: list[str] = []
        self._step = step or (lambda: None)
        self.rebuilt = False

    def step(self, _reader) -> int:
        self.steps.append(threading.current_thread().name)
        self._step()
        return 1

    def rebuild(self, _reader) -> int:
        self.rebuilt = True
        return 42


class Seeks:
    def __init__(self) -> None:
        self.seeks: list = []

    def seek(self, tp) -> None:
        self.seeks.append((tp.partition, tp.offset))

    def pause(self, _tps) -> None:
        pass

    def resume(self, _tps) -> None:
        pass


class NoOtherLive:
    def refresh(self) -> None:
        pass

    def other_live(self, _partition, _within) -> bool:
        return False


def service(workers: list[StandIn]) -> EngineService:
    from concurrent.futures import ThreadPoolExecutor

    svc = EngineService.__new__(EngineService)
    svc.workers = {w.partition: w for w in workers}
    svc._paused = set()
    svc._pool = ThreadPoolExecutor(len(workers), "keel-engine-txn")
    svc.consumer = Seeks()
    svc.beats = NoOtherLive()
    svc.reader = None

    class Opts:
        orders_topic = "keel.orders"
        takeover_s = 1.0
    svc.opts = Opts()
    return svc


def test_primaries_commit_side_by_side():
    # Each stand-in's "commit" waits until all three are inside theirs at once: stepped
    # one after another, the first would wait for the others forever (the barrier breaks).
    barrier = threading.Barrier(3, timeout=20)
    workers = [StandIn(p, step=barrier.wait) for p in range(3)]
    svc = service(workers)
    try:
        svc._step_all(set(workers))
    finally:
        svc._pool.shutdown()
    assert all(len(w.steps) == 1 for w in workers)
    assert len({w.steps[0] for w in workers}) == 3       # three threads, one each


def test_a_lone_partition_and_standbys_step_on_the_loop_thread():
    workers = [StandIn(0), StandIn(1, Role.STANDBY)]
    svc = service(workers)
    try:
        svc._step_all(set(workers))
    finally:
        svc._pool.shutdown()
    here = threading.current_thread().name
    assert workers[0].steps == [here] and workers[1].steps == [here]


def test_a_failed_transaction_is_rebuilt_and_the_others_finish():
    def fail():
        raise TransactionFailed("aborted")

    ok = StandIn(0)
    failed = StandIn(1, step=fail)
    svc = service([ok, failed])
    try:
        svc._step_all({ok, failed})
    finally:
        svc._pool.shutdown()
    assert failed.rebuilt and svc.consumer.seeks == [(1, 42)]
    assert ok.steps and not ok.rebuilt


def test_fencing_is_raised_once_every_transaction_is_done():
    release = threading.Event()

    def fenced():
        raise Fenced("another instance owns it")

    slow = StandIn(0, step=lambda: release.wait(20))
    gone = StandIn(1, step=fenced)
    svc = service([slow, gone])
    threading.Timer(0.2, release.set).start()
    try:
        with pytest.raises(Fenced):
            svc._step_all({slow, gone})
        assert release.is_set() and slow.steps      # it was waited for, not abandoned
    finally:
        svc._pool.shutdown()
