"""How an engine transaction ends: committed, or failed and sorted into what the partition
does next.

commit() retries commit_transaction in short calls, so SIGTERM or another live instance
is noticed between them. fail() decides what a failed transaction means: Fenced (another
instance owns the transactional.id: write nothing more), Interrupted (asked to stop: the
open transaction is left to the next writer's init_transactions), or TransactionFailed
(aborted here: rebuild the partition from the log). Pure policy over a producer and two
checks the caller passes; the partition's state stays in engine.service.partition.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NoReturn

from confluent_kafka import KafkaError, KafkaException

from infra.logs import event

log = logging.getLogger("engine.service.partition")     # the partition's log, as before
TXN_TIMEOUT = 30.0
COMMIT_TIMEOUT = 10.0
ABORT_TIMEOUT = 5.0
# A fatal producer error (_FATAL) after a takeover is the fencing surfacing on produce().
FENCING_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                 KafkaError._FATAL}


class Fenced(Exception):
    """Another instance owns this partition's transactional.id now: write nothing more."""


class TransactionFailed(Exception):
    """A transaction was aborted; the partition must be rebuilt from the log."""


class Interrupted(Exception):
    """Asked to stop while a transaction could not finish (the broker is unreachable): it
    is left open, and the next writer's init_transactions aborts it."""


class Refused(Exception):
    """The producer queue refused part of a batch."""


def kafka_error(exc: Exception) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


def commit(producer, partition: int, timeout: float, stale: Callable[[], bool],
           stopping: Callable[[], bool], clock: Callable[[], float] = time.monotonic) -> None:
    """commit_transaction, retried in one-second calls (a timed-out call may be made
    again) so that SIGTERM or another live instance is noticed between them."""
    deadline = clock() + timeout
    while True:
        try:
            producer.commit_transaction(max(0.1, min(1.0, deadline - clock())))
            return
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or not err.retriable() or clock() >= deadline:
                raise
            if stale():
                # A fenced writer on tansu sees its connection dropped, not an error
                # code: retrying would hang. Another instance is beating: stop.
                raise Fenced(f"commit kept failing ({err}) while another instance "
                             "is live") from exc
            if stopping():
                raise Interrupted(f"partition {partition}: commit not confirmed "
                                  f"({err}) when asked to stop") from exc
            time.sleep(0.01)        # an error that comes back at once: do not spin


def fail(producer, partition: int, exc: Exception, stale: Callable[[], bool],
         stopping: Callable[[], bool]) -> NoReturn:
    """Raise what the failed transaction means (see the module docstring)."""
    err = kafka_error(exc)
    if err is not None and (err.code() in FENCING_CODES or err.fatal()):
        raise Fenced(f"partition {partition}: {err}") from exc
    if stale():
        raise Fenced(f"transaction failed ({err}) while another instance is live") from exc
    if stopping():
        # Aborting and rebuilding would wait on the broker again; the open transaction
        # is aborted by whoever starts next.
        raise Interrupted(f"partition {partition}: transaction failed ({err}) "
                          "when asked to stop") from exc
    event(log, "transaction failed, aborting and rebuilding", logging.ERROR,
          partition=partition, error=str(exc))
    try:
        producer.abort_transaction(ABORT_TIMEOUT)
    except KafkaException as abort_exc:
        # Cannot even abort: the producer is no longer ours to use. Stop writing.
        raise Fenced(f"abort failed after {err}: {abort_exc}") from abort_exc
    raise TransactionFailed(str(exc)) from exc
