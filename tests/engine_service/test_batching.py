"""When the engine's batch waits for more records (pure logic of EngineService._pump, on a
scripted consumer: no clock involved, only which calls it makes).

At a steady rate what the consumer has queued is all there is until the next fetch, so
the batch closes at once; only when the last fetch reported more records at the broker
than reached us (a backlog) does the time bound let the batch fill.
"""
from __future__ import annotations

from engine.service.runner import EngineService

from .conftest import make_env


class _Msg:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self):
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Consumer:
    """Hands out `queued` records; the last fetch reported high watermark `high`."""

    def __init__(self, queued: int, high: int) -> None:
        self.queued = [_Msg(i) for i in range(queued)]
        self.high = high
        self.waits: list[float] = []        # timeouts of consume() calls that may block

    def poll(self, timeout):
        return self.queued.pop(0) if self.queued else None

    def consume(self, n, timeout):
        if timeout > 0:
            self.waits.append(timeout)
        out, self.queued = self.queued[:n], self.queued[n:]
        return out

    def get_watermark_offsets(self, tp, cached=False):
        assert cached, "the batch decision must not ask the broker"
        return 0, self.high


def _service(tmp_path, kafka_bootstrap, consumer) -> EngineService:
    # A bound far beyond any scheduling delay: whether the pump waits must not depend on
    # how fast this machine reaches the check.
    env = make_env(kafka_bootstrap, tmp_path, KEEL_ENGINE_MAX_BATCH_MS="60000")
    service = EngineService(env.settings, env.markets, [0])
    service.consumer = consumer
    return service


def test_a_batch_closes_at_once_when_nothing_more_is_at_the_broker(tmp_path, kafka_bootstrap):
    consumer = _Consumer(queued=40, high=40)
    _service(tmp_path, kafka_bootstrap, consumer)._pump()
    assert consumer.queued == [] and consumer.waits == []


def test_a_batch_waits_to_fill_while_a_backlog_is_behind(tmp_path, kafka_bootstrap):
    consumer = _Consumer(queued=40, high=9_000)
    _service(tmp_path, kafka_bootstrap, consumer)._pump()
    assert consumer.queued == [] and len(consumer.waits) == 1
