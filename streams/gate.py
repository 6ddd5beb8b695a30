"""accounts' step for one input record: read it, apply the rules, queue its outputs.

The worker (streams.accounts) hands every record of keel.requests and keel.settlements to
`Gate.handle` in partition order; the rules are streams.ledger's, the bytes
streams.wire's. Nothing here waits or touches Kafka: outputs are appended to `emit` as
(topic, key, value, partition, headers) tuples for streams.app to send.

A new order accepted as it stands (most requests) takes one pass: its fields are read
from the request's bytes (`Wire.new_order`), the ledger checks and applies it in one call
(`Accounts.place_new`) and its three outputs are written mostly from copies of the
request's own bytes (`Wire.accepted`). Anything else, a rejection included, goes the
general way (`Wire.request`, `Accounts.handle_request`, `publish`), which writes the same
bytes and makes the same changes (tests/streams/test_gate.py compares the two ways over
random traffic).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from engine.domain import ResultCode
from schemas.codec import Codec, CodecError
from streams.dlq import dead_letter
from streams.keys import user_partition
from streams.ledger import Accounts, Outcome
from streams.units import Units
from streams.wire import Wire

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, codec: Codec, wire: Wire, units: Units, accounts: Accounts,
                 partitions: int, requests: str, topics: tuple, emit: Callable,
                 on_dead_letter: Callable[[], None] = lambda: None,
                 fast: bool = True) -> None:
        """`topics`: the (orders, replies, balances, dlq) topics as `emit` names them;
        `requests` the name of keel.requests as records carry it (any other topic is
        keel.settlements)."""
        self.codec, self.wire, self.accounts = codec, wire, accounts
        self.partitions = partitions
        self.requests = requests
        self.orders, self.replies, self.balances, self.dlq = topics
        self.emit = emit
        self.on_dead_letter = on_dead_letter
        self.fast = fast and wire.copies
        self.inputs = self.outputs = 0          # counted until the worker reads them
        # pair -> (keel.orders key, partition); (user, asset) -> (keel.balances key, ...)
        self.pair_keys = {pair: (pair.encode(), pu.partition)
                          for pair, pu in units.pairs.items()}
        self.balance_keys: dict = {}

    def balance_key(self, uid: int, asset: str) -> tuple[bytes, int]:
        keys = self.balance_keys
        if len(keys) >= 100_000:
            keys.clear()
        # keyed by user and asset (the topic is compacted: one row per asset survives),
        # partitioned by user like every other per-user topic
        found = keys[uid, asset] = (f"{uid}:{asset}".encode(),
                                    user_partition(uid, self.partitions))
        return found

    def handle(self, message) -> None:
        """One record of keel.requests or keel.settlements (a Faust message or an aiokafka
        record: topic, partition, offset, key, value)."""
        if message.topic == self.requests and self.fast:
            data = message.value
            fields = self.wire.new_order(data)
            if fields is not None and user_partition(fields[1], self.partitions) \
                    == message.partition:
                partition, offset = message.partition, message.offset
                done = self.accounts.place_new(partition, offset, *fields[:12])
                if done is not None:
                    order_id, asset, avail, held, version = done
                    place, reply, balance = self.wire.accepted(data, fields, order_id, asset,
                                                               avail, held, version)
                    uid, pair = fields[1], fields[3]
                    key, to = self.pair_keys[pair]
                    emit = self.emit
                    emit((self.orders, key, place, to, _source(partition, offset)))
                    emit((self.replies, fields[0].encode(), reply, None, None))
                    key, to = self.balance_keys.get((uid, asset)) or \
                        self.balance_key(uid, asset)
                    emit((self.balances, key, balance, to, None))
                    self.inputs += 1
                    self.outputs += 3
                    return
        self.handle_any(message)

    def handle_any(self, message) -> None:
        """`handle` the general way, for any record."""
        accounts, n = self.accounts, self.partitions
        try:
            if message.topic == self.requests:
                request = self.wire.request(message.value)      # codec.decode, faster
                if user_partition(request["user_id"], n) != message.partition:
                    # Its owner's state lives on another partition: applying it here
                    # would split the user's funds in two.
                    self.reject(message, ResultCode.INVALID_REQUEST,
                                f"user {request['user_id']} belongs to partition "
                                f"{user_partition(request['user_id'], n)}")
                    return
                out = accounts.handle_request(request, message.partition, message.offset)
            else:
                out = accounts.apply_settlement(self.codec.decode("settlement", message.value),
                                                message.offset)
        except CodecError as exc:
            self.reject(message, exc.code, exc.reason)
            return
        if out.invalid:
            log.error("settlement set aside: %s", out.invalid)
            self.reject(message, ResultCode.INSUFFICIENT_BALANCE, out.invalid)
            return
        self.publish(out, message)
        self.inputs += 1

    def publish(self, out: Outcome, message) -> None:
        commands, answers, changes = out.commands, out.replies, out.balances
        emit, wire = self.emit, self.wire
        if commands:
            source = _source(message.partition, message.offset)
            for cmd, request_id in commands:
                key, partition = self.pair_keys[cmd.pair]
                emit((self.orders, key, wire.command(cmd, request_id), partition, source))
        # Replies and balances are built here from decoded records and integer arithmetic:
        # no schema check (it cost more than the encoding).
        for reply in answers:
            emit((self.replies, reply["request_id"].encode(), wire.reply(reply), None, None))
        for bal in changes:
            uid, asset = bal["user_id"], bal["asset"]
            key, partition = self.balance_keys.get((uid, asset)) or \
                self.balance_key(uid, asset)
            emit((self.balances, key, wire.balance(bal), partition, None))
        self.outputs += len(commands) + len(answers) + len(changes)

    def reject(self, message, code: int, reason: str) -> None:
        self.emit((self.dlq, message.topic.encode(),
                   dead_letter(self.codec, message, reason, code, "accounts"), None, None))
        self.on_dead_letter()


def _source(partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers of a command: keel-source names the request it came from, so a copy
    written again after a crash carries the same one and the engine drops it (whatever
    its kind)."""
    return [("keel-source", b"%d:%d" % (partition, offset))]
