"""An in-process exchange for the pure rules: accounts -> engine -> settlement -> accounts.

Queues stand in for keel.orders and keel.settlements so a test decides when each stage
catches up: requests race ahead of settlements exactly as they do on the broker.
"""
from __future__ import annotations

from collections import Counter, deque

from engine.engine import Engine
from engine.markets import parse_markets
from streams.ledger import Accounts
from streams.settle import Settlement
from streams.units import Units

MARKETS = parse_markets({
    "fee_account": 0,
    "assets": {"AAA": {"decimals": 3}, "BBB": {"decimals": 2}, "QQQ": {"decimals": 4}},
    "markets": [
        # 1 lot = 100 AAA units, 1 notional unit = 10 QQQ units; fees where ceil() bites.
        {"pair": "AAAQQQ", "base": "AAA", "quote": "QQQ", "tick_size": "0.01",
         "lot_size": "0.1", "min_notional": "0.05", "maker_fee": "0.001",
         "taker_fee": "0.0025", "partition": 0},
        # Zero maker fee, and a maker rate above the taker rate.
        {"pair": "BBBQQQ", "base": "BBB", "quote": "QQQ", "tick_size": "0.001",
         "lot_size": "1", "min_notional": "0", "maker_fee": "0.003", "taker_fee": "0",
         "partition": 1},
    ],
})
UNITS = Units.from_markets(MARKETS)


def request(rid: str, uid: int, what: str, ts: int = 1_000, **body) -> dict:
    return {"request_id": rid, "user_id": uid, "ts": ts, "body": (f"keel.{what}", body)}


def place(rid: str, uid: int, pair: str, side: int, price: int, qty: int, kind: int = 0,
          tif: int = 0, quote_qty: int = 0, stp: int = 0, cid: str | None = None,
          ts: int = 1_000) -> dict:
    return request(rid, uid, "PlaceOrder", ts, pair=pair, side=side, kind=kind, tif=tif,
                   price=price, qty=qty, quote_qty=quote_qty, stp=stp, client_order_id=cid)


class Exchange:
    def __init__(self, markets=MARKETS, duplicate_settlements: bool = False) -> None:
        self.units = Units.from_markets(markets)
        self.accounts = Accounts(self.units)
        self.engine = Engine(markets, impl="python")
        self.settlement = Settlement(self.units)
        self.orders: deque = deque()          # keel.orders
        self.settlements: deque = deque()     # keel.settlements
        self.replies: list[dict] = []
        self.events: list = []
        self.deposited: Counter = Counter()
        self.withdrawn: Counter = Counter()
        self.duplicate = duplicate_settlements
        self._last: dict | None = None
        self.pending_withdrawals: dict[str, dict] = {}
        self.copies: dict[int, list] = {}     # id(last record of an event) -> its copies
        # One rising position for every request: tests name partitions loosely, and a
        # user's offsets must rise as they do on the user's one partition.
        self.offset = 0

    def send(self, req: dict, partition: int = 0) -> list[dict]:
        self.offset += 1
        out = self.accounts.handle_request(req, partition, self.offset)
        self.orders.extend(out.commands)
        self.replies += out.replies
        kind, body = req["body"]
        if out.replies and out.replies[-1]["code"] == 0:
            if kind.endswith("Deposit"):
                self.deposited[body["asset"]] += body["amount"]
            elif kind.endswith(".Withdraw"):
                self.pending_withdrawals[req["request_id"]] = dict(body, user_id=req["user_id"])
            elif kind.endswith("WithdrawalResult"):
                self.pending_withdrawals.pop(body["withdrawal_request_id"], None)
                if body["completed"]:
                    self.withdrawn[body["asset"]] += body["amount"]
        return out.replies

    def match(self, n: int | None = None) -> None:
        while self.orders and (n is None or n > 0):
            cmd, _ = self.orders.popleft()
            events = self.engine.apply(cmd)
            self.events += events
            for ev in events:
                records = self.settlement.settle(ev)
                if self.duplicate and records:
                    # a redelivered event: its records come again (after the originals,
                    # in the same step, so timing is unchanged) and accounts drops them
                    self.copies[id(records[-1])] = self.settlement.settle(ev)
                self.settlements.extend(records)
            n = None if n is None else n - 1

    def settle(self, n: int | None = None) -> None:
        while self.settlements and (n is None or n > 0):
            record = self.settlements.popleft()
            self.accounts.apply_settlement(record)
            for copy in self.copies.pop(id(record), []):
                self.accounts.apply_settlement(copy)
            if self.duplicate:
                # redelivered at once, and the one before it again (an older offset)
                self.accounts.apply_settlement(record)
                if self._last is not None:
                    self.accounts.apply_settlement(self._last)
                self._last = record
            n = None if n is None else n - 1

    def drain(self) -> None:
        while self.orders or self.settlements:
            self.match()
            self.settle()

    # ---- what the tests check ----

    def totals(self) -> Counter:
        total: Counter = Counter()
        for key, (avail, held, _) in self.accounts.balances().items():
            total[key.split(":", 1)[1]] += avail + held
        return total

    def expected_totals(self) -> Counter:
        want = Counter(self.deposited)
        want.subtract(self.withdrawn)
        return want

    def negative(self) -> list[str]:
        return [k for k, (a, h, _) in self.accounts.balances().items() if a < 0 or h < 0]
