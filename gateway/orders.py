"""What the gateway knows of every order, fill and balance, folded from Kafka.

Orders are registered when accounts accepts the request (so GET /order works the moment
POST returns, even before the engine has spoken) and then follow keel.events: Accepted,
Trade, Done, Cancelled, Expired, Amended, Rejected. Balances follow keel.balances (the
highest version per user and asset wins). Pure state: the feed calls `apply_*`, the
handlers read; listeners hear every change (the user-data stream, request waiters).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.domain import (
    Accepted,
    Amended,
    Cancelled,
    Done,
    Expired,
    Rejected,
    ResultCode,
    Trade,
)

PENDING, NEW, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED, EXPIRED = (
    "PENDING_NEW", "NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED")
FINAL = frozenset((FILLED, CANCELED, REJECTED, EXPIRED))
TRADES_PER_USER = 2000
FINISHED_KEPT = 200_000      # final orders remembered; older ones are forgotten first


@dataclass
class Fill:
    trade_id: int
    price: int
    qty: int
    fee: int
    is_maker: bool
    ts: int


@dataclass
class OrderState:
    pair: str
    order_id: int
    user_id: int
    client_order_id: str = ""
    side: int = 0
    kind: int = 0
    tif: int = 0
    price: int = 0
    qty: int = 0
    quote_qty: int = 0
    stp: int = 0
    executed: int = 0
    cum_quote: int = 0
    status: str = PENDING
    code: int = 0                 # ResultCode of a rejection
    time: int = 0
    update_time: int = 0
    accepted_seq: int = 0
    fills: list[Fill] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class UserTrade:
    pair: str
    trade_id: int
    order_id: int
    price: int
    qty: int
    fee: int
    is_buyer: bool
    is_maker: bool
    ts: int


Listener = Callable[[OrderState, object], None]


class OrderBookkeeper:
    def __init__(self, finished_kept: int = FINISHED_KEPT) -> None:
        self.finished_kept = finished_kept
        self.finished: deque[tuple[str, int]] = deque()
        self.orders: dict[tuple[str, int], OrderState] = {}
        self.by_user: dict[int, dict[tuple[str, int], OrderState]] = {}
        self.by_client: dict[tuple[int, str], OrderState] = {}
        self.trades: dict[int, deque[UserTrade]] = {}
        self.balances: dict[int, dict[str, tuple[int, int, int, int]]] = {}
        self.events_seq: dict[str, int] = {}
        self.listeners: list[Listener] = []
        self.balance_listeners: list[Callable[[int, str, int, int, int], None]] = []

    # ---- registration from replies / requests ----
    def register(self, pair: str, order_id: int, user_id: int, ts: int, **fields) -> OrderState:
        state = self._state(pair, order_id, user_id)
        for name, value in fields.items():
            if value is not None and (name != "client_order_id" or not state.client_order_id):
                setattr(state, name, value)
        if not state.time:
            state.time = state.update_time = ts
        if state.client_order_id:
            self.by_client[(user_id, state.client_order_id)] = state
        return state

    def register_placed(self, pair: str, order_id: int, user_id: int, ts: int,
                        client_order_id: str, form) -> OrderState:
        """`register` for a new order the gateway placed, from its checked form
        (gateway.order_form.NewOrder): the same fields, set without the keyword walk."""
        state = self._state(pair, order_id, user_id)
        if not state.client_order_id:
            state.client_order_id = client_order_id
        state.side, state.kind, state.tif = form.side, form.kind, form.tif
        state.price, state.qty, state.quote_qty, state.stp = (form.price, form.qty,
                                                              form.quote_qty, form.stp)
        if not state.time:
            state.time = state.update_time = ts
        if state.client_order_id:
            self.by_client[(user_id, state.client_order_id)] = state
        return state

    def _state(self, pair: str, order_id: int, user_id: int) -> OrderState:
        key = (pair, order_id)
        state = self.orders.get(key)
        if state is None:
            state = self.orders[key] = OrderState(pair, order_id, user_id)
            self.by_user.setdefault(user_id, {})[key] = state
        return state

    def find(self, user_id: int, pair: str, order_id: int | None = None,
             client_order_id: str | None = None) -> OrderState | None:
        """The user's order, or None — another user's order is never returned."""
        if order_id is not None:
            state = self.orders.get((pair, order_id))
        else:
            state = self.by_client.get((user_id, client_order_id or ""))
        if state is None or state.user_id != user_id or state.pair != pair:
            return None
        return state

    def user_orders(self, user_id: int, pair: str | None = None) -> list[OrderState]:
        orders = self.by_user.get(user_id, {}).values()
        return sorted((o for o in orders if pair is None or o.pair == pair),
                      key=lambda o: o.order_id)

    # ---- engine events ----
    def apply_event(self, ev) -> bool:
        """Fold one engine event; False when it was already seen (seq not new)."""
        pair = ev.pair
        if ev.seq <= self.events_seq.get(pair, 0):
            return False
        self.events_seq[pair] = ev.seq
        kind = type(ev)
        if kind is Trade:
            self._trade(ev)
            return True
        if kind is Accepted:
            st = self._state(pair, ev.order_id, ev.user_id)
            st.side, st.kind, st.tif = ev.side, ev.kind, ev.tif
            st.price, st.qty, st.quote_qty = ev.price, ev.qty, ev.quote_qty
            st.accepted_seq = ev.seq
            if st.status == PENDING:
                st.status = NEW
            st.time = st.time or ev.ts
        elif kind is Rejected:
            st = self.orders.get((pair, ev.order_id))
            if st is None or st.status != PENDING:
                # A refused cancel or amend: the order itself is unchanged.
                self._notify(st, ev)
                return True
            # An unfillable FOK is reported the Binance way: the order EXPIRED.
            st.status = EXPIRED if ev.code == ResultCode.FOK_NOT_FILLABLE else REJECTED
            st.code = ev.code
        elif kind is Done:
            st = self._state(pair, ev.order_id, ev.user_id)
            st.status = FILLED
        elif kind is Cancelled:
            st = self._state(pair, ev.order_id, ev.user_id)
            st.status = CANCELED
        elif kind is Expired:
            st = self._state(pair, ev.order_id, ev.user_id)
            st.status = EXPIRED
        elif kind is Amended:
            st = self._state(pair, ev.order_id, ev.user_id)
            st.price, st.qty = ev.price, st.executed + ev.qty
        else:
            return True
        st.update_time = ev.ts
        self._notify(st, ev)
        return True

    def _trade(self, ev: Trade) -> None:
        taker_buys = ev.taker_side == 0
        for order_id, user_id, fee, is_maker in (
                (ev.maker_order_id, ev.maker_user_id, ev.maker_fee, True),
                (ev.taker_order_id, ev.taker_user_id, ev.taker_fee, False)):
            st = self._state(ev.pair, order_id, user_id)
            st.executed += ev.qty
            st.cum_quote += ev.price * ev.qty
            if st.status in (PENDING, NEW):
                st.status = PARTIALLY_FILLED
            st.update_time = ev.ts
            st.fills.append(Fill(ev.trade_id, ev.price, ev.qty, fee, is_maker, ev.ts))
            is_buyer = taker_buys != is_maker
            trades = self.trades.get(user_id)
            if trades is None:
                trades = self.trades[user_id] = deque(maxlen=TRADES_PER_USER)
            trades.append(UserTrade(ev.pair, ev.trade_id, order_id, ev.price, ev.qty, fee,
                                    is_buyer, is_maker, ev.ts))
            self._notify(st, ev)

    def _notify(self, state: OrderState | None, ev) -> None:
        for listener in self.listeners:
            listener(state, ev)
        if state is not None and state.final and type(ev) is not Trade:
            self._retire(state)

    def _retire(self, state: OrderState) -> None:
        """Memory follows open orders plus a bounded tail of finished ones: the oldest
        finished order is forgotten (GET answers -2013 for it) once the tail is full."""
        self.finished.append((state.pair, state.order_id))
        while len(self.finished) > self.finished_kept:
            key = self.finished.popleft()
            old = self.orders.get(key)
            if old is None or not old.final:
                continue
            del self.orders[key]
            mine = self.by_user.get(old.user_id)
            if mine is not None:
                mine.pop(key, None)
                if not mine:
                    del self.by_user[old.user_id]
            if old.client_order_id and self.by_client.get((old.user_id, old.client_order_id)) is old:
                del self.by_client[(old.user_id, old.client_order_id)]

    # ---- balances ----
    def apply_balance(self, rec: dict) -> bool:
        user, asset = rec["user_id"], rec["asset"]
        have = self.balances.setdefault(user, {})
        old = have.get(asset)
        if old is not None and old[2] >= rec["version"]:
            return False
        have[asset] = (rec["available"], rec["held"], rec["version"], rec["ts"])
        for listener in self.balance_listeners:
            listener(user, asset, rec["available"], rec["held"], rec["ts"])
        return True
