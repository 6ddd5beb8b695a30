"""Everything the gateway folds from Kafka, and who is waiting for what.

`Folding` receives decoded records from the feed (one topic at a time, in partition
order), updates the market state and the order bookkeeping, fans changes out to the
WebSocket hub and wakes request waiters. It runs on the event loop only.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from engine.domain import Rejected, Trade
from engine.markets import MarketsConfig
from gateway import stream_events as se
from gateway.fanout import Hub
from gateway.market import MarketState
from gateway.orders import OrderBookkeeper, OrderState
from gateway.render import Units, build_units, fixed


class DepthBatches:
    """Diffs merged per stream between pushes: U of the first, u of the last, each level at
    its latest quantity — still contiguous with the REST lastUpdateId sequence."""

    def __init__(self) -> None:
        self.pending: dict[str, dict] = {}

    def add(self, stream: str, rec: dict) -> None:
        merged = self.pending.get(stream)
        if merged is None:
            merged = self.pending[stream] = {
                "pair": rec["pair"], "first_update_id": rec["first_update_id"],
                "bid_map": {}, "ask_map": {}}
        merged["last_update_id"] = rec["last_update_id"]
        merged["ts"] = rec["ts"]
        for lv in rec["bids"]:
            merged["bid_map"][lv["price"]] = lv["qty"]
        for lv in rec["asks"]:
            merged["ask_map"][lv["price"]] = lv["qty"]

    def take(self, suffix: str | None = None) -> list[tuple[str, dict]]:
        ready = [s for s in self.pending if suffix is None or s.endswith(suffix)]
        out = []
        for stream in ready:
            m = self.pending.pop(stream)
            m["bids"] = [{"price": p, "qty": q} for p, q in sorted(m.pop("bid_map").items(),
                                                                   reverse=True)]
            m["asks"] = [{"price": p, "qty": q} for p, q in sorted(m.pop("ask_map").items())]
            out.append((stream, m))
        return out


# A waiter's test: given the order (None if unknown) and the event, is it satisfied?
Check = Callable[[OrderState | None, object], bool]

# Engine events carry no client order id: the gateway learns it from the order's reply
# (keel.replies), read by another fetch than keel.events. When an order's first events are
# folded before its reply, its executionReports are held until the reply names the order,
# so none reaches the user with an empty clientOrderId; past this long (an order no reply
# will name) they go out as they are.
HOLD_UNNAMED_S = 1.0


class Folding:
    def __init__(self, markets: MarketsConfig, hub: Hub) -> None:
        self.markets = markets
        self.units: dict[str, Units] = build_units(markets)
        self.market = MarketState(sorted(markets.markets))
        self.orders = OrderBookkeeper()
        self.hub = hub
        self.depth_seen: dict[str, int] = {}
        self.depth_batches = DepthBatches()
        self.replies: dict[str, asyncio.Future] = {}
        self.order_waiters: dict[tuple[str, int], list[tuple[Check, asyncio.Future]]] = {}
        self.orders.listeners.append(self._order_changed)
        self.orders.balance_listeners.append(self._balance_changed)
        # (pair, order_id) -> (first held at, user, reports): orders whose client id is unknown
        self.unnamed: dict[tuple[str, int], tuple[float, int, list[dict]]] = {}
        self.clock = time.monotonic

    # ---- records from the feed ----
    def on_event(self, ev) -> None:
        if not self.orders.apply_event(ev):
            return
        if type(ev) is Trade:
            self.market.apply_trade(ev)
            stream = f"{ev.pair.lower()}@trade"
            if self.hub.has(stream):
                self.hub.publish(stream, se.trade(self.units[ev.pair], ev), ev.pair)
        self._check_completion(ev.pair)

    def on_depth(self, rec: dict) -> None:
        pair = rec["pair"]
        if pair not in self.units:
            return
        self.market.apply_depth(rec)
        if not rec["is_snapshot"]:
            self.depth_seen[pair] = max(self.depth_seen.get(pair, 0), rec["last_update_id"])
            low = pair.lower()
            for stream in (f"{low}@depth", f"{low}@depth@100ms"):
                if self.hub.has(stream):
                    self.depth_batches.add(stream, rec)
            self._check_completion(pair)

    def on_ticker(self, rec: dict) -> None:
        pair = rec["pair"]
        if pair not in self.units or not self.market.apply_ticker(rec):
            return
        low, u = pair.lower(), self.units[pair]
        if self.hub.has(f"{low}@ticker"):
            self.hub.publish(f"{low}@ticker", se.ticker(u, rec), pair)
        if self.hub.has(f"{low}@miniTicker"):
            self.hub.publish(f"{low}@miniTicker", se.mini_ticker(u, rec), pair)

    def on_candle(self, rec: dict) -> None:
        pair = rec["pair"]
        if pair not in self.units:
            return
        self.market.apply_candle(rec)
        stream = f"{pair.lower()}@kline_{rec['interval']}"
        if self.hub.has(stream):
            self.hub.publish(stream, se.kline(self.units[pair], rec), pair)

    def on_balance(self, rec: dict) -> None:
        self.orders.apply_balance(rec)

    def on_reply(self, rec: dict) -> None:
        future = self.replies.pop(rec["request_id"], None)
        if rec.get("pair") and rec.get("order_id") is not None and rec["code"] == 0:
            # Every instance learns client order ids, not only the one that placed it.
            if rec.get("client_order_id"):
                self.orders.register(rec["pair"], rec["order_id"], rec["user_id"], rec["ts"],
                                     client_order_id=rec["client_order_id"])
                self.named(rec["pair"], rec["order_id"], rec["client_order_id"])
        if future is not None and not future.done():
            future.set_result(rec)

    def flush_depth(self, streams_ending: str | None = None) -> None:
        """Publish the merged diffs of the @depth streams whose interval has ended."""
        for stream, rec in self.depth_batches.take(streams_ending):
            self.hub.publish(stream, se.depth_diff(self.units[rec["pair"]], rec), rec["pair"])

    async def run_depth_pacer(self) -> None:
        """@depth@100ms every 100 ms and @depth every second, as Binance paces them."""
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            self.flush_depth("@100ms")
            if tick % 10 == 0:
                self.flush_depth("@depth")
            self.release_unnamed()

    # ---- executionReports of orders not yet named ----
    def named(self, pair: str, order_id: int, client_order_id: str) -> None:
        """The order's client id is known now: its held reports go out, in order."""
        held = self.unnamed.pop((pair, order_id), None)
        if held is not None:
            for report in held[2]:
                report["c"] = client_order_id
                self.hub.publish_user(held[1], report)

    def release_unnamed(self) -> None:
        """Reports held longer than HOLD_UNNAMED_S go out without a client id."""
        due = self.clock() - HOLD_UNNAMED_S
        for key in [k for k, held in self.unnamed.items() if held[0] <= due]:
            _, user_id, reports = self.unnamed.pop(key)
            for report in reports:
                self.hub.publish_user(user_id, report)

    # ---- waiting ----
    def expect_reply(self, request_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        return future

    def forget_reply(self, request_id: str) -> None:
        self.replies.pop(request_id, None)

    def wait_order(self, pair: str, order_id: int, check: Check) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        state = self.orders.orders.get((pair, order_id))
        if check(state, None):
            future.set_result(state)
        else:
            self.order_waiters.setdefault((pair, order_id), []).append((check, future))
        return future

    def complete(self, state: OrderState | None, _ev=None) -> bool:
        """All of a new order's matching is known: the engine's depth diff for the batch
        that accepted it has arrived together with its events (for a filled order too, so
        the REST depth already shows what it took), or it was never accepted (rejected)."""
        if state is None:
            return False
        if state.final and not state.accepted_seq:
            return True
        seq = state.accepted_seq
        return bool(seq) and min(self.orders.events_seq.get(state.pair, 0),
                                 self.depth_seen.get(state.pair, 0)) >= seq

    def _wake(self, key: tuple[str, int], state: OrderState | None, ev) -> None:
        waiters = self.order_waiters.get(key)
        if not waiters:
            return
        keep = []
        for check, future in waiters:
            if future.done():
                continue
            if check(state, ev):
                future.set_result(state)
            else:
                keep.append((check, future))
        if keep:
            self.order_waiters[key] = keep
        else:
            del self.order_waiters[key]

    def _check_completion(self, pair: str) -> None:
        for key in [k for k in self.order_waiters if k[0] == pair]:
            self._wake(key, self.orders.orders.get(key), None)

    def _order_changed(self, state: OrderState | None, ev) -> None:
        if type(ev) is Rejected and state is None:
            self._wake((ev.pair, ev.order_id), None, ev)
            return
        if state is None:
            return
        self._wake((state.pair, state.order_id), state, ev)
        if state.user_id in self.hub.users:
            report = se.execution_report(self.units[state.pair], state, ev)
            key = (state.pair, state.order_id)
            if not state.client_order_id or key in self.unnamed:
                self.unnamed.setdefault(key, (self.clock(), state.user_id, []))[2].append(report)
                return
            self.hub.publish_user(state.user_id, report)

    def _balance_changed(self, user_id: int, asset: str, available: int, held: int,
                         ts: int) -> None:
        if user_id not in self.hub.users:
            return
        decimals = self.markets.assets[asset].decimals if asset in self.markets.assets else 0
        self.hub.publish_user(user_id, se.account_position(
            user_id, asset, fixed(available, decimals), fixed(held, decimals), ts))
