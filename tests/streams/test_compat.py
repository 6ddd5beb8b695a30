"""streams.compat.changelog_written: run_batches commits only once every changelog record
of the batch is acknowledged (issue 5: Faust's producer flush is no proof of that)."""
from __future__ import annotations

import asyncio

import pytest

from streams import compat


def run(coro):
    return asyncio.run(coro)


def test_waits_for_every_record_written_so_far():
    async def scenario():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(3)]
        compat._changelog_sent.extend(futs)
        for i, fut in enumerate(futs):          # acknowledged one by one, later
            loop.call_later(0.01 * (i + 1), fut.set_result, i)
        n = await compat.changelog_written(timeout=30)
        return n, [f.done() for f in futs], list(compat._changelog_sent)

    n, done, left = run(scenario())
    assert n == 3 and all(done) and left == []


def test_a_failed_send_raises():
    async def scenario():
        loop = asyncio.get_running_loop()
        ok, bad = loop.create_future(), loop.create_future()
        compat._changelog_sent.extend([ok, bad])
        ok.set_result(1)
        loop.call_later(0.01, bad.set_exception, ConnectionError("broker gone"))
        await compat.changelog_written(timeout=30)

    with pytest.raises(ConnectionError):
        run(scenario())


def test_an_unanswered_record_times_out_and_stays_pending():
    async def scenario():
        fut = asyncio.get_running_loop().create_future()
        compat._changelog_sent.append(fut)
        with pytest.raises(TimeoutError):
            await compat.changelog_written(timeout=0.05)
        return fut

    fut = run(scenario())
    # not cancelled: Faust still resolves it when the send completes
    assert not fut.cancelled()


def test_nothing_written_returns_at_once():
    compat._changelog_sent.clear()
    assert run(compat.changelog_written(timeout=0)) == 0
