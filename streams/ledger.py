"""The accounts rules: the pre-trade risk gate, funding and settlement (pure).

A user's whole state is one value, `users[str(uid)]`, so one record changes exactly one
key and a crash can never leave half of a record's effect behind (the worker writes the
touched users once per batch, before the batch's outputs are sent):

    b   {asset: [available, held, version]}            (asset smallest units)
    o   {order_id: [pair, side, asset, remaining hold, client id]}   (open orders)
    c   {client id: order_id}     (open orders' client ids, then the last RECENT closed)
    r   {request id: 1}           (the user's last RECENT request ids)
    w   {request id: [asset, amount]}                   (pending withdrawals, held)
    s   {pair: [seq, [[order_id, reason], ...]]}        (last engine seq applied)
    n   {"requests": offset, "settlements": offset}     (last input offsets applied)
    d   {request offset: [code, message, pair, order_id, client id]}  (the last two batches')
    g, x  the user's changelog generation and its changes since (streams.userlog)

On the changelog a user is a snapshot and a record of what changed since, one of the two
written per batch (streams.userlog): `Accounts` notes the entries of o, c and r it
changes (`_touched`), and `changelog_records` makes the user's record. The user's dict is
the table's own value, changed in place (copying a busy user's thousands of ids each
batch cost what the changes record saves): the table is read only through
streams.staged, which writes the user back at the end of the batch, and a batch that
fails ends the process before anything could read it half-changed (streams.app).

Exactly-once effects on an at-least-once log: the worker writes a batch's user states
before it sends the batch's outputs. A record redelivered after a crash is recognised by
its offset (`n`), changes nothing, and has its outputs rebuilt from the decision kept for
it (`d`), so whatever reached the engine is what the state says; a request retried with
the same id is answered DUPLICATE_REQUEST (`r`); a settlement the settlement worker
emitted twice is dropped by `(pair, seq)`. A rebuilt Place carries the same order id
(from the request's offset) and the engine drops a copy that already reached it.
"""
from __future__ import annotations

from collections.abc import MutableMapping

from engine.domain import Amend, Cancel, CancelAll, Place, ResultCode
from streams.holds import check_place, hold_for
from streams.units import Units
from streams.userlog import new_user, records

# Order ids are unique across accounts partitions: (the request's offset + 1) times the
# stride plus the partition (so at most ORDER_ID_STRIDE user partitions).
ORDER_ID_STRIDE = 4096
RECENT = 1_000          # request ids and closed client ids remembered per user
# A batch holds at most this many records of one user (streams.accounts closes it there)...
BATCH_PER_USER = 2_000
# ... so this many decisions per user cover the batch in hand and the one before.
DECISIONS = 4_096

TRADE, RELEASE, FEE = 0, 1, 2       # Settlement.reason
_OK = int(ResultCode.OK)
_new_tuple = tuple.__new__


def _remember(recent: dict, key, value, keep: int = RECENT, touched=None,
              part: str = "") -> None:
    recent[key] = value
    if len(recent) > keep:
        _forget_oldest(recent, keep, touched, part)


def _forget_oldest(recent: dict, keep: int, touched=None, part: str = "") -> None:
    while len(recent) > keep:
        old = next(iter(recent))
        del recent[old]
        if touched is not None:
            touched.append((part, old))


class Outcome:
    """What handling one record asks the adapter to publish."""

    __slots__ = ("commands", "replies", "balances", "invalid")

    def __init__(self) -> None:
        self.commands: list = []                    # (engine command, request id)
        self.replies: list = []                     # keel.Reply records
        self.balances: list = []                    # keel.Balance records
        self.invalid: str | None = None             # why the record was not applied (DLQ)


class Accounts:
    def __init__(self, units: Units, users: MutableMapping | None = None) -> None:
        self.units = units
        self._pairs = units.pairs
        self._max_open = units.max_open_orders
        self.users = {} if users is None else users
        self._mine: dict = {}           # key -> the user, as this batch changes it
        self._touched: dict = {}        # key -> its entries (part, id) this batch changed
        self._floor: dict = {}          # partition -> the batch's first request offset
        self._before: dict = {}         # ... and the previous batch's
        self._trimmed: set = set()      # keys whose old decisions this batch dropped
        self._handlers = {f"keel.{kind}": getattr(self, f"_on_{kind}") for kind in (
            "PlaceOrder", "CancelOrder", "CancelAllOrders", "AmendOrder", "Deposit",
            "Withdraw", "WithdrawalResult")}

    def user(self, uid: int) -> dict:
        key = str(uid)
        u = self._mine.get(key)
        if u is not None:
            return u
        u = self.users.get(key)
        if u is None:
            u = new_user()
        self.users[key] = self._mine[key] = u       # written back at the end of the batch
        self._touched[key] = []
        return u

    def _touch(self, uid: int) -> list:
        """The list of entries (part, id) of `uid` that this batch changed."""
        return self._touched[str(uid)]

    def changelog_records(self, key: str, user: dict):
        """The changelog records of one user written back (streams.userlog)."""
        return records(key, user, self._touched.get(key, ()))

    def end_batch(self) -> None:
        """The batch's users are written: the next batch starts its own notes."""
        self._mine.clear()
        self._touched.clear()
        self._trimmed.clear()
        self._before, self._floor = self._floor, {}

    def _seen(self, u: dict, source: str, offset: int | None) -> bool:
        """True for a record at or below the last offset applied from `source`."""
        if offset is None:
            return False
        if offset <= u["n"].get(source, -1):
            return True
        u["n"][source] = offset
        return False

    # ---- views (tests, tools) ----

    def balances(self) -> dict[str, list]:
        """"uid:asset" -> [available, held, version] over every user."""
        return {f"{uid}:{asset}": row for uid, u in self.users.items()
                for asset, row in u["b"].items()}

    def open_orders(self) -> dict[str, list]:
        """"order_id" -> [uid, pair, side, asset, remaining hold, client id]."""
        return {str(oid): [int(uid), *entry] for uid, u in self.users.items()
                for oid, entry in u["o"].items()}

    # ---- balances ----

    def balance(self, uid: int, asset: str) -> tuple[int, int]:
        row = self.user(uid)["b"].get(asset)
        return (row[0], row[1]) if row else (0, 0)

    def _change(self, out: Outcome, uid: int, asset: str, d_avail: int, d_held: int,
                ts: int) -> None:
        self._move(out, self.user(uid)["b"], uid, asset, d_avail, d_held, ts)

    def _move(self, out: Outcome, rows: dict, uid: int, asset: str, d_avail: int,
              d_held: int, ts: int) -> None:
        """_change on the user's balance rows `rows`."""
        avail, held, version = rows.get(asset) or (0, 0, 0)
        avail, held = avail + d_avail, held + d_held
        if avail < 0 or held < 0:
            # The gate and settlement bound every debit, so this is a bug, not a rejection.
            raise AssertionError(f"balance of {uid}:{asset} would be {avail}/{held}")
        rows[asset] = [avail, held, version + 1]
        out.balances.append({"user_id": uid, "asset": asset, "available": avail,
                             "held": held, "version": version + 1, "ts": ts})

    # ---- requests (keel.requests) ----

    def _enter(self, key: str, uid: int, partition: int, offset: int) -> dict:
        """The user of a request at `offset` of `partition`, its batch's notes begun."""
        u = self._mine.get(key) or self.user(uid)
        floor = self._floor.get(partition)
        if floor is None:
            floor = self._floor[partition] = offset
        if key not in self._trimmed:
            # once a user and batch: the floor is the same for all its requests in it
            self._trimmed.add(key)
            _forget_before(u["d"], self._before.get(partition, floor))
        return u

    def handle_request(self, request: dict, partition: int, offset: int) -> Outcome:
        """One keel.requests record at `offset` of the user's `partition`."""
        out = Outcome()
        uid, rid, ts = request["user_id"], request["request_id"], request["ts"]
        key = str(uid)
        u = self._enter(key, uid, partition, offset)
        last = u["n"]          # self._seen(u, "requests", offset), written out
        if offset <= last.get("requests", -1):
            return self._rebuild(u, request, offset)
        last["requests"] = offset
        kind, body = request["body"]
        if rid in u["r"]:
            self._reply(out, request, ResultCode.DUPLICATE_REQUEST, "request already handled")
        else:
            self._note_request(u, key, rid)
            handler = self._handlers.get(kind)
            if handler is None:
                kind = kind.rsplit(".", 1)[-1]
                handler = getattr(self, f"_on_{kind}", None)
            if handler is None:
                self._reply(out, request, ResultCode.INVALID_REQUEST, f"unknown request {kind}")
            else:
                handler(out, request, body, uid, ts, (offset + 1) * ORDER_ID_STRIDE + partition)
        r = out.replies[-1]
        _remember(u["d"], str(offset), [r["code"], r["message"], r["pair"], r["order_id"],
                                        r["client_order_id"]], DECISIONS)
        return out

    def _note_request(self, u: dict, key: str, rid: str) -> None:
        """The request id `rid` is the user's now: a repeat of it is a duplicate."""
        touched = self._touched[key]
        touched.append(("r", rid))
        _remember(u["r"], rid, 1, RECENT, touched, "r")

    def _hold(self, u: dict, key: str, uid: int, pair: str, side: int, asset: str,
              amount: int, order_id: int, cid: str | None) -> list:
        """Hold `amount` of `asset` for the new order `order_id` and note it open (and its
        client id taken); the user's balance row of `asset` after."""
        # self._move(out, rows, uid, asset, -amount, amount, ts), written out
        rows = u["b"]
        avail, held, version = rows.get(asset) or (0, 0, 0)
        avail, held, version = avail - amount, held + amount, version + 1
        if avail < 0 or held < 0:
            raise AssertionError(f"balance of {uid}:{asset} would be {avail}/{held}")
        row = rows[asset] = [avail, held, version]
        oid = str(order_id)
        u["o"][oid] = [pair, side, asset, amount, cid]
        touched = self._touched[key]
        touched.append(("o", oid))
        if cid is not None:
            _remember_cid(u, cid, order_id, touched)
        return row

    def place_new(self, partition: int, offset: int, rid: str, uid: int, ts: int,
                  pair: str, side: int, kind: int, tif: int, price: int, qty: int,
                  quote_qty: int, stp: int, cid: str | None) -> tuple | None:
        """handle_request for a PlaceOrder that is accepted as it stands: a new offset
        and request id, a known pair, valid terms, an unused client id and the funds
        for its hold. Then it changes exactly what handle_request changes, in the same
        order, and returns (order_id, asset held, available, held, version): the
        adapter writes the Place, the OK reply and the balance from those. In every
        other case it returns None and has changed nothing that handle_request would
        not change first (the user's batch notes), and handle_request decides.
        One pass without an Outcome, dicts or a Place per order: in-process, the
        common new order's rules and outputs cost about half (tests/streams/test_gate
        runs both over random traffic and compares every output byte and the state)."""
        key = str(uid)
        u = self._enter(key, uid, partition, offset)
        last = u["n"]
        if offset <= last.get("requests", -1):
            return None                         # a replay: its decision is rebuilt
        if rid in u["r"]:
            return None                         # DUPLICATE_REQUEST
        pu = self._pairs.get(pair)
        if pu is None or check_place(pu, side, kind, tif, price, qty, quote_qty, stp):
            return None                         # a rejection, with its reason
        if cid is not None and cid in u["c"]:
            return None
        if len(u["o"]) >= self._max_open:
            return None                         # TOO_MANY_OPEN_ORDERS
        asset, amount = hold_for(pu, side, kind, price, qty, quote_qty)
        row = u["b"].get(asset)
        if row is None or row[0] < amount:
            return None
        # accepted: handle_request's and _on_PlaceOrder's changes, in their order
        last["requests"] = offset
        self._note_request(u, key, rid)
        order_id = (offset + 1) * ORDER_ID_STRIDE + partition
        avail, held, version = self._hold(u, key, uid, pair, side, asset, amount, order_id,
                                          cid)
        _remember(u["d"], str(offset), [_OK, "", pair, order_id, cid], DECISIONS)
        return order_id, asset, avail, held, version

    def _rebuild(self, u: dict, request: dict, offset: int) -> Outcome:
        """The outputs of a request already applied: its reply, its engine command if it
        was accepted, and the user's current balances."""
        out = Outcome()
        decision = u["d"].get(str(offset))
        if decision is None:
            return out                  # older than any batch in flight: long delivered
        code, message, pair, order_id, cid = decision
        self._reply(out, request, ResultCode(code), message, pair=pair, order_id=order_id,
                    client_order_id=cid)
        uid, ts = request["user_id"], request["ts"]
        kind, b = request["body"]
        kind = kind.rsplit(".", 1)[-1]
        if code == ResultCode.OK:
            cmd = None
            if kind == "PlaceOrder":
                cmd = Place(pair, order_id, uid, b["side"], b["kind"], b["tif"], b["price"],
                            b["qty"], b["quote_qty"], b["stp"], ts)
            elif kind == "CancelOrder":
                cmd = Cancel(pair, order_id, uid, ts)
            elif kind == "AmendOrder":
                cmd = Amend(pair, order_id, uid, b["new_price"], b["new_qty"], ts)
            elif kind == "CancelAllOrders":
                cmd = CancelAll(pair, uid, ts)
            if cmd is not None:
                out.commands.append((cmd, request["request_id"]))
        self._current_balances(out, uid, ts)
        return out

    def _current_balances(self, out: Outcome, uid: int, ts: int) -> None:
        for asset, (avail, held, version) in self.user(uid)["b"].items():
            out.balances.append({"user_id": uid, "asset": asset, "available": avail,
                                 "held": held, "version": version, "ts": ts})

    def _reply(self, out: Outcome, request: dict, code: ResultCode, message: str = "",
               pair: str | None = None, order_id: int | None = None,
               client_order_id: str | None = None) -> None:
        out.replies.append({"request_id": request["request_id"], "user_id": request["user_id"],
                            "ts": request["ts"], "code": int(code), "message": message,
                            "pair": pair, "order_id": order_id,
                            "client_order_id": client_order_id})

    def _on_PlaceOrder(self, out, request, b, uid, ts, order_id) -> None:
        pair, cid = b["pair"], b.get("client_order_id")
        pu = self._pairs.get(pair)
        if pu is None:
            return self._reply(out, request, ResultCode.UNKNOWN_PAIR, f"no pair {pair}",
                               pair=pair, client_order_id=cid)
        side, kind, tif, price, qty, quote_qty, stp = b["side"], b["kind"], b["tif"], \
            b["price"], b["qty"], b["quote_qty"], b["stp"]
        code = check_place(pu, side, kind, tif, price, qty, quote_qty, stp)
        if code:
            return self._reply(out, request, code, code.name.lower(), pair=pair,
                               client_order_id=cid)
        key = str(uid)
        u = self._mine.get(key) or self.user(uid)
        if cid is not None and cid in u["c"]:
            return self._reply(out, request, ResultCode.DUPLICATE_CLIENT_ORDER_ID,
                               f"client order id {cid} already used", pair=pair,
                               client_order_id=cid)
        if len(u["o"]) >= self._max_open:
            return self._reply(out, request, ResultCode.TOO_MANY_OPEN_ORDERS,
                               f"the account has {len(u['o'])} open orders, the most allowed",
                               pair=pair, client_order_id=cid)
        asset, amount = hold_for(pu, side, kind, price, qty, quote_qty)
        row = u["b"].get(asset)
        if (row[0] if row else 0) < amount:
            return self._reply(out, request, ResultCode.INSUFFICIENT_BALANCE,
                               f"{asset} available is below the {amount} this order needs",
                               pair=pair, client_order_id=cid)
        avail, held, version = self._hold(u, key, uid, pair, side, asset, amount, order_id, cid)
        out.balances.append({"user_id": uid, "asset": asset, "available": avail,
                             "held": held, "version": version, "ts": ts})
        rid = request["request_id"]
        # Place(...) without the namedtuple's own __new__ (a Python frame per order)
        out.commands.append((_new_tuple(Place, (pair, order_id, uid, side, kind, tif, price,
                                                qty, quote_qty, stp, ts)), rid))
        # self._reply(out, request, ResultCode.OK, "", pair, order_id, cid), written out
        out.replies.append({"request_id": rid, "user_id": uid, "ts": ts, "code": _OK,
                            "message": "", "pair": pair, "order_id": order_id,
                            "client_order_id": cid})

    def _own_order(self, out, request, b, uid) -> tuple[int, list] | None:
        """The order a cancel/amend names, if it is the user's and still open; else reply.
        Another user's order is as unknown as a missing one (its state lives elsewhere)."""
        pair, cid = b["pair"], b.get("client_order_id")
        order_id = b.get("order_id")
        if (order_id is None) == (cid is None):
            self._reply(out, request, ResultCode.INVALID_REQUEST,
                        "name the order by exactly one of order_id and client_order_id",
                        pair=pair, client_order_id=cid)
            return None
        u = self.user(uid)
        if order_id is None:
            order_id = u["c"].get(cid)
        entry = u["o"].get(str(order_id)) if order_id is not None else None
        if entry is None or entry[0] != pair:
            self._reply(out, request, ResultCode.UNKNOWN_ORDER, "no such open order",
                        pair=pair, order_id=order_id, client_order_id=cid)
            return None
        return order_id, entry

    def _on_CancelOrder(self, out, request, b, uid, ts, order_id) -> None:
        found = self._own_order(out, request, b, uid)
        if found is not None:
            order_id, entry = found
            out.commands.append((Cancel(b["pair"], order_id, uid, ts), request["request_id"]))
            self._reply(out, request, ResultCode.OK, "", pair=b["pair"], order_id=order_id,
                        client_order_id=entry[4])

    def _on_CancelAllOrders(self, out, request, b, uid, ts, order_id) -> None:
        if b["pair"] not in self.units.pairs:
            return self._reply(out, request, ResultCode.UNKNOWN_PAIR, f"no pair {b['pair']}",
                               pair=b["pair"])
        out.commands.append((CancelAll(b["pair"], uid, ts), request["request_id"]))
        self._reply(out, request, ResultCode.OK, "", pair=b["pair"])

    def _on_AmendOrder(self, out, request, b, uid, ts, order_id) -> None:
        found = self._own_order(out, request, b, uid)
        if found is None:
            return
        order_id, (pair, side, asset, remaining, cid) = found
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

    def _on_Deposit(self, out, request, b, uid, ts, order_id) -> None:
        if b["asset"] not in self.units.assets:
            return self._reply(out, request, ResultCode.UNKNOWN_ASSET, f"no asset {b['asset']}")
        if b["amount"] <= 0:
            return self._reply(out, request, ResultCode.INVALID_REQUEST, "amount must be > 0")
        self._change(out, uid, b["asset"], b["amount"], 0, ts)
        self._reply(out, request, ResultCode.OK)

    def _on_Withdraw(self, out, request, b, uid, ts, order_id) -> None:
        asset, amount = b["asset"], b["amount"]
        if asset not in self.units.assets:
            return self._reply(out, request, ResultCode.UNKNOWN_ASSET, f"no asset {asset}")
        if amount <= 0:
            return self._reply(out, request, ResultCode.INVALID_REQUEST, "amount must be > 0")
        if self.balance(uid, asset)[0] < amount:
            return self._reply(out, request, ResultCode.INSUFFICIENT_BALANCE,
                               f"{asset} available is below {amount}")
        self._change(out, uid, asset, -amount, amount, ts)
        self.user(uid)["w"][request["request_id"]] = [asset, amount]
        self._reply(out, request, ResultCode.OK)

    def _on_WithdrawalResult(self, out, request, b, uid, ts, order_id) -> None:
        pending_all = self.user(uid)["w"]
        key = b["withdrawal_request_id"]
        pending = pending_all.get(key)
        if pending is None or pending != [b["asset"], b["amount"]]:
            return self._reply(out, request, ResultCode.INVALID_REQUEST,
                               "no pending withdrawal with that id, asset and amount")
        asset, amount = pending
        del pending_all[key]
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

    def apply_settlement(self, record: dict, offset: int | None = None) -> Outcome:
        """Apply one settlement at most once: records of one (user, pair) arrive in seq
        order; `offset` is the record's place on the user's keel.settlements partition."""
        out = Outcome()
        uid, pair, seq, reason = record["user_id"], record["pair"], record["seq"], record["reason"]
        u = self.user(uid)
        if self._seen(u, "settlements", offset):
            self._current_balances(out, uid, record["ts"])   # its only outputs
            return out
        order_id = record.get("order_id")
        mark = [-1 if order_id is None else order_id, reason]
        last_seq, done = u["s"].get(pair) or (0, [])
        if seq < last_seq or (seq == last_seq and mark in done):
            return out
        u["s"][pair] = [seq, (done if seq == last_seq else []) + [mark]]
        ts = record["ts"]
        if reason == RELEASE:
            entry = u["o"].pop(str(order_id), None)
            if entry is not None:
                self._touch(uid).append(("o", str(order_id)))
            if entry is not None and entry[3]:
                self._change(out, uid, entry[2], entry[3], -entry[3], ts)
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
            entry = u["o"].get(str(order_id))
            if entry is not None:
                spent = -sum(e["held_delta"] for e in record["entries"] if e["asset"] == entry[2])
                u["o"][str(order_id)] = entry[:3] + [entry[3] - spent, entry[4]]
                self._touch(uid).append(("o", str(order_id)))
        return out


def _forget_before(decisions: dict, floor: int) -> None:
    """Drop the decisions of requests before `floor`, the previous batch's first offset on
    the user's partition (streams.app writes a batch's state while the previous batch's
    outputs may still be on their way). Older ones were handled by an earlier batch
    whose outputs were acknowledged before this batch's state is written, or lie before
    the committed offset, so no replay will ask for them again. What stays is at most
    two batches' worth, and the user's value (copied and written to the changelog each
    batch) stays small.
    Decisions are kept in offset order (a user lives on one partition)."""
    while decisions:
        first = next(iter(decisions))
        if int(first) >= floor:
            return
        del decisions[first]


def _remember_cid(u: dict, cid: str, order_id: int, touched: list) -> None:
    """Keep every open order's client id and the last RECENT closed ones."""
    ids = u["c"]
    ids[cid] = order_id
    touched.append(("c", cid))
    if len(ids) <= RECENT + len(u["o"]):
        return
    for old, oid in list(ids.items()):
        if str(oid) not in u["o"]:
            del ids[old]
            touched.append(("c", old))
            if len(ids) <= RECENT + len(u["o"]):
                return
