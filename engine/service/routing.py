"""From a keel.orders record to an engine command, or the reason it goes to keel.dlq.

Pure and shared by the live service, recovery and `keel replay`, so every one of them
skips exactly the same records.
"""
from __future__ import annotations

from typing import NamedTuple

from engine.domain import OrderKind, Place, ResultCode, Side, TimeInForce
from engine.markets import MarketsConfig
from engine.service.wire import FastWire
from schemas.codec import Codec, CodecError

_SIDES = frozenset(int(s) for s in Side)
_KINDS = frozenset(int(k) for k in OrderKind)
_TIFS = frozenset(int(t) for t in TimeInForce)
_STPS = frozenset(range(4))


class Fault(NamedTuple):
    """Why a record cannot be applied: a CodecFault or ResultCode value and a sentence."""

    code: int
    reason: str


class Router:
    def __init__(self, codec: Codec, markets: MarketsConfig, partition: int) -> None:
        self.codec = codec
        self.wire = FastWire(codec)
        self._decode = self.wire.decode_command
        self.partition = partition
        self._home = {m.pair: m.partition for m in markets.markets.values()}

    def route(self, value: bytes | None):
        """The command in `value`, or a Fault. Never raises for bad input."""
        if value is None:
            return Fault(int(ResultCode.INVALID_REQUEST), "tombstone (no value) on keel.orders")
        try:
            cmd, _request_id = self._decode(value)
        except CodecError as exc:
            return Fault(exc.code, exc.reason)
        home = self._home.get(cmd.pair)
        if home is None:
            return Fault(int(ResultCode.UNKNOWN_PAIR), f"unknown pair {cmd.pair!r}")
        if home != self.partition:
            return Fault(int(ResultCode.INVALID_REQUEST),
                         f"pair {cmd.pair} belongs to partition {home}, "
                         f"not {self.partition}")
        if type(cmd) is Place and not (cmd.side in _SIDES and cmd.kind in _KINDS
                                       and cmd.tif in _TIFS and cmd.stp in _STPS):
            return Fault(int(ResultCode.INVALID_REQUEST),
                         f"place {cmd.order_id}: side/kind/tif/stp out of range "
                         f"({cmd.side}/{cmd.kind}/{cmd.tif}/{cmd.stp})")
        return cmd
