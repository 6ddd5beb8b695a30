"""Settlement rules: engine events -> per-user settlement records (pure).

Runs per pair partition and tracks every live order's remaining hold, derived from its
Accepted event with the same `hold_for` the risk gate used, so both sides agree on it to
the unit without talking to each other. State (a plain mapping, values reassigned, one
key per order so that a crash never leaves half an event's change behind):

    live   "order_id" -> [uid, side, asset, remaining hold, last engine seq applied]

An event redelivered after a crash changes no entry that already saw its seq; its records
are emitted again and accounts drops them by `(pair, seq)`.

Records (schemas/settlement.avsc): TRADE for each side of a fill, FEE for the fee
account, RELEASE when an order ends (Done, Cancelled, Expired) or a Place is rejected.
accounts releases from its own copy of the hold, so a RELEASE for a rejected Place,
whose hold settlement never saw, needs no amounts.
"""
from __future__ import annotations

from collections.abc import MutableMapping

from engine.domain import Accepted, Cancelled, Done, Expired, Rejected, Side, Trade
from streams.holds import hold_for
from streams.ledger import FEE, RELEASE, TRADE
from streams.units import Units


class Settlement:
    def __init__(self, units: Units, live: MutableMapping | None = None) -> None:
        self.units = units
        self.live = {} if live is None else live

    def settle(self, event) -> list[dict]:
        pair, seq = event.pair, event.seq
        if isinstance(event, Trade):
            return self._trade(event)
        if isinstance(event, Accepted):
            pu = self.units.pairs.get(pair)
            entry = self.live.get(str(event.order_id))
            if pu is not None and (entry is None or entry[4] < seq):
                asset, amount = hold_for(pu, event.side, event.kind, event.price, event.qty,
                                         event.quote_qty)
                self.live[str(event.order_id)] = [event.user_id, event.side, asset, amount, seq]
            return []
        if isinstance(event, Done | Cancelled | Expired):
            entry = self.live.pop(str(event.order_id), None)
            entries = []
            if entry is not None and entry[3]:
                entries = [_entry(entry[2], entry[3], -entry[3])]
            return [_record(event.user_id, event, RELEASE, event.order_id, None, entries)]
        if isinstance(event, Rejected) and str(event.order_id) not in self.live:
            # A rejected Place (a rejected cancel or amend of a live order releases nothing).
            return [_record(event.user_id, event, RELEASE, event.order_id, None, [])]
        return []

    def _trade(self, t: Trade) -> list[dict]:
        pu = self.units.pairs[t.pair]
        if t.taker_side == Side.BUY:
            buyer, seller = (t.taker_order_id, t.taker_user_id, t.taker_fee), \
                (t.maker_order_id, t.maker_user_id, t.maker_fee)
        else:
            buyer, seller = (t.maker_order_id, t.maker_user_id, t.maker_fee), \
                (t.taker_order_id, t.taker_user_id, t.taker_fee)
        spend, base = pu.notional(t.price * t.qty), pu.lots(t.qty)

        b_oid, b_uid, b_fee = buyer
        b_live = self.live.get(str(b_oid))
        fee_b = pu.notional(b_fee)
        if b_live is not None:
            # Per-fill rounding can exceed a quote-sized hold's fee bound: the buyer never
            # pays more than it held, and the fee account gets what was actually charged.
            fee_b = max(0, min(fee_b, b_live[3] - spend))
            if b_live[4] < t.seq:
                self.live[str(b_oid)] = b_live[:3] + [b_live[3] - spend - fee_b, t.seq]
        s_oid, s_uid, s_fee = seller
        s_live = self.live.get(str(s_oid))
        if s_live is not None and s_live[4] < t.seq:
            self.live[str(s_oid)] = s_live[:3] + [s_live[3] - base, t.seq]
        fee_s = pu.notional(s_fee)
        records = [
            _record(b_uid, t, TRADE, b_oid, t.trade_id,
                    [_entry(pu.quote, 0, -(spend + fee_b)), _entry(pu.base, base, 0)]),
            _record(s_uid, t, TRADE, s_oid, t.trade_id,
                    [_entry(pu.base, 0, -base), _entry(pu.quote, spend - fee_s, 0)]),
        ]
        if fee_b + fee_s:
            records.append(_record(self.units.fee_account, t, FEE, None, t.trade_id,
                                   [_entry(pu.quote, fee_b + fee_s, 0)]))
        return records


def _entry(asset: str, available_delta: int, held_delta: int) -> dict:
    return {"asset": asset, "available_delta": available_delta, "held_delta": held_delta}


def _record(uid: int, event, reason: int, order_id, trade_id, entries: list) -> dict:
    return {"user_id": uid, "pair": event.pair, "seq": event.seq, "ts": event.ts,
            "reason": reason, "order_id": order_id, "trade_id": trade_id, "entries": entries}
