"""The accounts rules: the pre-trade risk gate, funding and settlement (pure).

State lives in plain mutable mappings (dicts in tests, Faust tables in the worker).
Values are never mutated in place: every change assigns a new value, because a Faust
table writes its changelog on assignment only. Every key starts with the user id, so a
user's whole state lives on the user's partition.

    balances     "uid:asset"   -> [available, held, version]    (asset smallest units)
    orders       "order_id"    -> [uid, pair, side, asset, remaining hold, client id]
    client_ids   "uid:cid"     -> order_id           (kept: a client id is never reused)
    requests     "uid:rid"     -> 1                  (request ids already handled)
    withdrawals  "uid:rid"     -> [asset, amount]    (pending, held until the result)
    settled      "uid:pair"    -> [seq, [[order_id, reason], ...]]  (last engine seq applied)
    counters     "p<n>"        -> orders numbered on partition n so far
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

from engine.domain import Amend, Cancel, CancelAll, Place, ResultCode
from streams.holds import check_place, hold_for
from streams.units import Units

# Order ids are unique across accounts partitions: a per-partition counter times the
# stride plus the partition (so at most ORDER_ID_STRIDE user partitions).
ORDER_ID_STRIDE = 4096

TRADE, RELEASE, FEE = 0, 1, 2       # Settlement.reason


@dataclass
class AccountsState:
    balances: MutableMapping = field(default_factory=dict)
    orders: MutableMapping = field(default_factory=dict)
    client_ids: MutableMapping = field(default_factory=dict)
    requests: MutableMapping = field(default_factory=dict)
    withdrawals: MutableMapping = field(default_factory=dict)
    settled: MutableMapping = field(default_factory=dict)
    counters: MutableMapping = field(default_factory=dict)


@dataclass
class Outcome:
    """What handling one record asks the adapter to publish."""

    commands: list = field(default_factory=list)    # (engine command, request id)
    replies: list = field(default_factory=list)     # keel.Reply records
    balances: list = field(default_factory=list)    # keel.Balance records
    invalid: str | None = None                      # why the record was not applied (DLQ)


class Accounts:
    def __init__(self, units: Units, state: AccountsState | None = None) -> None:
        self.units = units
        self.state = state or AccountsState()

    # ---- balances ----

    def balance(self, uid: int, asset: str) -> tuple[int, int]:
        row = self.state.balances.get(f"{uid}:{asset}")
        return (row[0], row[1]) if row else (0, 0)

    def _change(self, out: Outcome, uid: int, asset: str, d_avail: int, d_held: int,
                ts: int) -> None:
        key = f"{uid}:{asset}"
        avail, held, version = self.state.balances.get(key) or (0, 0, 0)
        avail, held = avail + d_avail, held + d_held
        if avail < 0 or held < 0:
            # The gate and settlement bound every debit, so this is a bug, not a rejection.
            raise AssertionError(f"balance of {key} would be {avail}/{held}")
        self.state.balances[key] = [avail, held, version + 1]
        out.balances.append({"user_id": uid, "asset": asset, "available": avail,
                             "held": held, "version": version + 1, "ts": ts})

    # ---- requests (keel.requests) ----

    def handle_request(self, request: dict, partition: int) -> Outcome:
        out = Outcome()
        uid, rid, ts = request["user_id"], request["request_id"], request["ts"]
        kind, body = request["body"]
        kind = kind.rsplit(".", 1)[-1]
        seen = f"{uid}:{rid}"
        if seen in self.state.requests:
            self._reply(out, request, ResultCode.DUPLICATE_REQUEST, "request already handled")
            return out
        self.state.requests[seen] = 1
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            self._reply(out, request, ResultCode.INVALID_REQUEST, f"unknown request {kind}")
        else:
            handler(out, request, body, uid, ts, partition)
        return out

    def _reply(self, out: Outcome, request: dict, code: ResultCode, message: str = "",
               pair: str | None = None, order_id: int | None = None,
               client_order_id: str | None = None) -> None:
        out.replies.append({"request_id": request["request_id"], "user_id": request["user_id"],
                            "ts": request["ts"], "code": int(code), "message": message,
                            "pair": pair, "order_id": order_id,
                            "client_order_id": client_order_id})

    def _on_PlaceOrder(self, out, request, b, uid, ts, partition) -> None:
        pair, cid = b["pair"], b.get("client_order_id")
        reply = {"pair": pair, "client_order_id": cid}
        pu = self.units.pairs.get(pair)
        if pu is None:
            return self._reply(out, request, ResultCode.UNKNOWN_PAIR, f"no pair {pair}", **reply)
        code = check_place(pu, b["side"], b["kind"], b["tif"], b["price"], b["qty"],
                           b["quote_qty"], b["stp"])
        if code:
            return self._reply(out, request, code, code.name.lower(), **reply)
        if cid is not None and f"{uid}:{cid}" in self.state.client_ids:
            return self._reply(out, request, ResultCode.DUPLICATE_CLIENT_ORDER_ID,
                               f"client order id {cid} already used", **reply)
        asset, amount = hold_for(pu, b["side"], b["kind"], b["price"], b["qty"], b["quote_qty"])
        if self.balance(uid, asset)[0] < amount:
            return self._reply(out, request, ResultCode.INSUFFICIENT_BALANCE,
                               f"{asset} available is below the {amount} this order needs",
                               **reply)
        counter = f"p{partition}"
        n = self.state.counters.get(counter, 0) + 1
        self.state.counters[counter] = n
        order_id = n * ORDER_ID_STRIDE + partition
        self._change(out, uid, asset, -amount, amount, ts)
        self.state.orders[str(order_id)] = [uid, pair, b["side"], asset, amount, cid]
        if cid is not None:
            self.state.client_ids[f"{uid}:{cid}"] = order_id
        out.commands.append((Place(pair, order_id, uid, b["side"], b["kind"], b["tif"],
                                   b["price"], b["qty"], b["quote_qty"], b["stp"], ts),
                             request["request_id"]))
        self._reply(out, request, ResultCode.OK, "", order_id=order_id, **reply)

    def _own_order(self, out, request, b, uid) -> tuple[int, list] | None:
        """The order a cancel/amend names, if it is the user's and still open; else reply."""
        pair, cid = b["pair"], b.get("client_order_id")
        order_id = b.get("order_id")
        if (order_id is None) == (cid is None):
            self._reply(out, request, ResultCode.INVALID_REQUEST,
                        "name the order by exactly one of order_id and client_order_id",
                        pair=pair, client_order_id=cid)
            return None
        if order_id is None:
            order_id = self.state.client_ids.get(f"{uid}:{cid}")
        entry = self.state.orders.get(str(order_id)) if order_id is not None else None
        if entry is None or entry[1] != pair:
            self._reply(out, request, ResultCode.UNKNOWN_ORDER, "no such open order",
                        pair=pair, order_id=order_id, client_order_id=cid)
            return None
        if entry[0] != uid:
            self._reply(out, request, ResultCode.NOT_ORDER_OWNER, "not your order",
                        pair=pair, order_id=order_id, client_order_id=cid)
            return None
        return order_id, entry

    def _on_CancelOrder(self, out, request, b, uid, ts, partition) -> None:
        found = self._own_order(out, request, b, uid)
        if found is not None:
            order_id, entry = found
            out.commands.append((Cancel(b["pair"], order_id, uid, ts), request["request_id"]))
            self._reply(out, request, ResultCode.OK, "", pair=b["pair"], order_id=order_id,
                        client_order_id=entry[5])

    def _on_CancelAllOrders(self, out, request, b, uid, ts, partition) -> None:
        if b["pair"] not in self.units.pairs:
            return self._reply(out, request, ResultCode.UNKNOWN_PAIR, f"no pair {b['pair']}",
                               pair=b["pair"])
        out.commands.append((CancelAll(b["pair"], uid, ts), request["request_id"]))
        self._reply(out, request, ResultCode.OK, "", pair=b["pair"])

    def _on_AmendOrder(self, out, request, b, uid, ts, partition) -> None:
        found = self._own_order(out, request, b, uid)
        if found is None:
            return
        order_id, (_, pair, side, asset, remaining, cid) = found
        reply = {"pair": pair, "order_id": order_id, "client_order_id": cid}
        if b["new_price"] <= 0:
            return self._reply(out, request, ResultCode.INVALID_PRICE, "invalid_price", **reply)
        if b["new_qty"] <= 0:
            return self._reply(out, request, ResultCode.INVALID_QUANTITY, "invalid_quantity",
                               **reply)
        # An amend never adds to the hold (settlement could not see the top-up): it must
        # fit in what the order still holds; otherwise cancel and place anew.
        _, need = hold_for(self.units.pairs[pair], side, 0, b["new_price"], b["new_qty"], 0)
        if need > remaining:
            return self._reply(out, request, ResultCode.INSUFFICIENT_BALANCE,
                               f"the amended order needs {need} {asset}, it holds {remaining}; "
                               "cancel and place a new order", **reply)
        out.commands.append((Amend(pair, order_id, uid, b["new_price"], b["new_qty"], ts),
                             request["request_id"]))
        self._reply(out, request, ResultCode.OK, "", **reply)

    def _on_Deposit(self, out, request, b, uid, ts, partition) -> None:
        if b["asset"] not in self.units.assets:
            return self._reply(out, request, ResultCode.UNKNOWN_ASSET, f"no asset {b['asset']}")
        if b["amount"] <= 0:
            return self._reply(out, request, ResultCode.INVALID_REQUEST, "amount must be > 0")
        self._change(out, uid, b["asset"], b["amount"], 0, ts)
        self._reply(out, request, ResultCode.OK)

    def _on_Withdraw(self, out, request, b, uid, ts, partition) -> None:
        asset, amount = b["asset"], b["amount"]
        if asset not in self.units.assets:
            return self._reply(out, request, ResultCode.UNKNOWN_ASSET, f"no asset {asset}")
        if amount <= 0:
            return self._reply(out, request, ResultCode.INVALID_REQUEST, "amount must be > 0")
        if self.balance(uid, asset)[0] < amount:
            return self._reply(out, request, ResultCode.INSUFFICIENT_BALANCE,
                               f"{asset} available is below {amount}")
        self._change(out, uid, asset, -amount, amount, ts)
        self.state.withdrawals[f"{uid}:{request['request_id']}"] = [asset, amount]
        self._reply(out, request, ResultCode.OK)

    def _on_WithdrawalResult(self, out, request, b, uid, ts, partition) -> None:
        key = f"{uid}:{b['withdrawal_request_id']}"
        pending = self.state.withdrawals.get(key)
        if pending is None or pending != [b["asset"], b["amount"]]:
            return self._reply(out, request, ResultCode.INVALID_REQUEST,
                               "no pending withdrawal with that id, asset and amount")
        asset, amount = pending
        del self.state.withdrawals[key]
        self._change(out, uid, asset, 0 if b["completed"] else amount, -amount, ts)
        self._reply(out, request, ResultCode.OK)

    # ---- settlements (keel.settlements) ----

    def _shortfall(self, uid: int, entries: list) -> str | None:
        delta: dict[str, list[int]] = {}
        for e in entries:
            d = delta.setdefault(e["asset"], [0, 0])
            d[0] += e["available_delta"]
            d[1] += e["held_delta"]
        for asset, (d_avail, d_held) in delta.items():
            avail, held = self.balance(uid, asset)
            if avail + d_avail < 0 or held + d_held < 0:
                return f"{uid}:{asset} ({avail}{d_avail:+}/{held}{d_held:+})"
        return None

    def apply_settlement(self, record: dict) -> Outcome:
        """Apply one settlement at most once: records of one (user, pair) arrive in seq order."""
        out = Outcome()
        uid, pair, seq, reason = record["user_id"], record["pair"], record["seq"], record["reason"]
        order_id = record.get("order_id")
        mark = [-1 if order_id is None else order_id, reason]
        key = f"{uid}:{pair}"
        last_seq, done = self.state.settled.get(key) or (0, [])
        if seq < last_seq or (seq == last_seq and mark in done):
            return out
        self.state.settled[key] = [seq, (done if seq == last_seq else []) + [mark]]
        ts = record["ts"]
        if reason == RELEASE:
            entry = self.state.orders.get(str(order_id))
            if entry is not None and entry[0] == uid:
                del self.state.orders[str(order_id)]
                if entry[4]:
                    self._change(out, uid, entry[3], entry[4], -entry[4], ts)
            return out
        short = self._shortfall(uid, record["entries"])
        if short:
            # Only possible if an order executed twice (a duplicated Place reached the
            # engine): never let a balance go negative, set the record aside instead.
            out.invalid = f"would make {short} negative"
            return out
        for e in record["entries"]:
            self._change(out, uid, e["asset"], e["available_delta"], e["held_delta"], ts)
        if reason == TRADE and order_id is not None:
            entry = self.state.orders.get(str(order_id))
            if entry is not None:
                spent = -sum(e["held_delta"] for e in record["entries"] if e["asset"] == entry[3])
                self.state.orders[str(order_id)] = entry[:4] + [entry[4] - spent, entry[5]]
        return out
