"""SIGNED trading endpoints: orders (new, query, cancel, amend), open and all orders,
account and my trades.

New orders and cancels go to accounts over Kafka (gateway.requests) and the answer waits,
within the configured deadline, for the reply and then for the engine's events. Reads
are answered from the gateway's folded state, so an order is visible the moment its POST
returns; a user only ever sees their own orders (another user's reads as unknown).
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from engine.domain import OrderKind, Rejected, ResultCode
from gateway import errors
from gateway import render as r
from gateway.context import BUS, CLOCK_MS, CONFIG, FOLDING, MARKETS, METRICS
from gateway.order_form import parse_new_order, protection_price
from gateway.orders import FINAL, PENDING, OrderState
from gateway.params import Params
from gateway.public import json_response
from gateway.signed import authenticate

OPEN = (PENDING, "NEW", "PARTIALLY_FILLED")


async def _ask(request: web.Request, user_id: int, body, action: str,
               validate: bool = True) -> dict:
    app = request.app
    try:
        reply = await app[BUS].ask(user_id, app[CLOCK_MS](), body, validate=validate)
    except errors.ApiError as err:
        if err.code == -1007:
            app[METRICS].order_timeouts.inc()
        raise
    if reply["code"] != 0:
        raise errors.from_result(reply["code"], action)
    return reply


async def _wait(request: web.Request, future: asyncio.Future) -> None:
    """Wait for the engine's side of a request; on timeout answer with what is known."""
    try:
        await asyncio.wait_for(future, request.app[CONFIG].order_timeout_s)
    except TimeoutError:
        pass


async def _complete(request: web.Request, state: OrderState) -> None:
    """Wait (within the deadline) until the engine's side of a new order is folded: its
    events and the depth diff of its batch (gateway.state.Folding.complete)."""
    folding = request.app[FOLDING]
    await _wait(request, folding.wait_order(state.pair, state.order_id, folding.complete))


def _depth_reached(folding, pair: str, order_id: int, seq: int) -> asyncio.Future:
    """Resolves once the local book has folded the engine's depth up to `seq`."""
    return folding.wait_order(pair, order_id,
                              lambda _st, _ev: folding.depth_seen.get(pair, 0) >= seq)


def _order_ref(params: Params) -> tuple[int | None, str | None]:
    order_id = params.integer("orderId", low=0)
    client_id = params.client_order_id("origClientOrderId")
    if order_id is None and client_id is None:
        raise errors.mandatory_missing("orderId")
    return order_id, client_id


async def new_order(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    app = request.app
    folding = app[FOLDING]
    form = parse_new_order(params, app[MARKETS])
    pair = form.market.pair
    if form.kind == OrderKind.MARKET:      # only a market order needs the book's levels
        form = protection_price(form, *folding.market.books[pair].depth(1000))
    client_id = form.client_order_id or app[BUS].new_client_order_id()
    known = folding.orders.by_client.get((principal.user_id, client_id))
    if known is not None and not known.final:
        raise errors.ApiError(-2010, "Duplicate order sent.")
    reply = await _ask(request, principal.user_id, form.body(client_id), "order")
    state = folding.orders.register_placed(pair, reply["order_id"], principal.user_id,
                                           reply["ts"], client_id, form)
    if form.resp_type == "ACK":
        return json_response(r.order_ack(state))
    await _complete(request, state)
    if state.status == "REJECTED":
        raise errors.from_result(state.code)
    return json_response(r.order_result(folding.units[pair], state,
                                        full=form.resp_type == "FULL"))


def _find(request: web.Request, user_id: int, params: Params, action: str) -> OrderState:
    market = params.market(request.app[MARKETS])
    order_id, client_id = _order_ref(params)
    state = request.app[FOLDING].orders.find(user_id, market.pair, order_id, client_id)
    if state is None:
        raise errors.from_result(-3101, action)
    return state


async def query_order(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    state = _find(request, principal.user_id, params, "query")
    if state.status == PENDING:
        # Placed through another gateway instance, whose answer already carried the
        # engine's verdict: this one answers as that one did once its own fold has it
        # (or with what it knows at the order deadline).
        await _complete(request, state)
    return json_response(r.order(request.app[FOLDING].units[state.pair], state))


def _cancel_view(u: r.Units, state: OrderState) -> dict:
    view = r.order(u, state)
    return {"symbol": state.pair, "origClientOrderId": state.client_order_id,
            "orderId": state.order_id, "orderListId": -1,
            "clientOrderId": state.client_order_id, "transactTime": state.update_time,
            **{k: view[k] for k in ("price", "origQty", "executedQty", "cummulativeQuoteQty",
                                    "status", "timeInForce", "type", "side",
                                    "selfTradePreventionMode")}}


async def cancel_order(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    folding = request.app[FOLDING]
    state = _find(request, principal.user_id, params, "cancel")
    if state.final:
        raise errors.from_result(-3101, "cancel")
    refused: list[int] = []

    def settled(st, ev) -> bool:
        if type(ev) is Rejected:
            refused.append(ev.code)
            return True
        return st is not None and st.final

    waiter = folding.wait_order(state.pair, state.order_id, settled)
    await _ask(request, principal.user_id, ("keel.CancelOrder", {
        "pair": state.pair, "order_id": state.order_id, "client_order_id": None}), "cancel")
    await _wait(request, waiter)
    if refused and not state.final:
        raise errors.from_result(refused[0], "cancel")
    return json_response(_cancel_view(folding.units[state.pair], state))


async def amend_keep_priority(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    folding = request.app[FOLDING]
    state = _find(request, principal.user_id, params, "cancel")
    new_qty = params.decimal("newQty", required=True)
    lots = request.app[MARKETS].market(state.pair).qty_to_lots(new_qty)
    if isinstance(lots, ResultCode):
        raise errors.from_result(lots)
    if state.final or not state.executed < lots < state.qty:
        raise errors.ApiError(-2038, "newQty must be greater than the executed quantity and "
                              "less than the order's quantity.")
    seen: list[object] = []

    def settled(st, ev) -> bool:
        if type(ev).__name__ in ("Amended", "Rejected") or (st is not None and st.final):
            seen.append(ev)
            return True
        return False

    waiter = folding.wait_order(state.pair, state.order_id, settled)
    await _ask(request, principal.user_id, ("keel.AmendOrder", {
        "pair": state.pair, "order_id": state.order_id, "client_order_id": None,
        "new_price": state.price, "new_qty": lots - state.executed}), "cancel")
    await _wait(request, waiter)
    if seen and type(seen[0]) is Rejected:
        raise errors.from_result(seen[0].code, "cancel")
    if seen and hasattr(seen[0], "seq"):
        # Read-your-writes for the book too: the amend's depth diff comes on keel.depth,
        # which may be folded after the event itself.
        await _wait(request, _depth_reached(folding, state.pair, state.order_id, seen[0].seq))
    return json_response({"transactTime": state.update_time, "executionId": state.update_time,
                          "amendedOrder": r.order(folding.units[state.pair], state)})


async def open_orders(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    market = params.market(request.app[MARKETS], required=False)
    folding = request.app[FOLDING]
    orders = folding.orders.user_orders(principal.user_id, market.pair if market else None)
    return json_response([r.order(folding.units[o.pair], o) for o in orders
                          if o.status in OPEN])


async def cancel_open_orders(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    market = params.market(request.app[MARKETS])
    folding = request.app[FOLDING]
    victims = [o for o in folding.orders.user_orders(principal.user_id, market.pair)
               if o.status in OPEN]
    if not victims:
        raise errors.ApiError(-2011, "Unknown order sent.")
    waiters = [folding.wait_order(o.pair, o.order_id, lambda st, ev: st is not None and st.final)
               for o in victims]
    await _ask(request, principal.user_id, ("keel.CancelAllOrders", {"pair": market.pair}),
               "cancel")
    await _wait(request, asyncio.gather(*waiters))
    u = folding.units[market.pair]
    return json_response([_cancel_view(u, o) for o in victims if o.status in FINAL])


async def all_orders(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    market = params.market(request.app[MARKETS])
    from_id = params.integer("orderId", low=0)
    start = params.integer("startTime", low=0)
    end = params.integer("endTime", low=0)
    limit = params.integer("limit", default=500, low=1, high=1000)
    folding = request.app[FOLDING]
    rows = [o for o in folding.orders.user_orders(principal.user_id, market.pair)
            if (from_id is None or o.order_id >= from_id)
            and (start is None or o.time >= start) and (end is None or o.time <= end)]
    rows = rows[:limit] if from_id is not None else rows[-limit:]
    return json_response([r.order(folding.units[o.pair], o) for o in rows])


async def my_trades(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    market = params.market(request.app[MARKETS])
    order_id = params.integer("orderId", low=0)
    from_id = params.integer("fromId", low=0)
    start = params.integer("startTime", low=0)
    end = params.integer("endTime", low=0)
    limit = params.integer("limit", default=500, low=1, high=1000)
    folding = request.app[FOLDING]
    rows = [t for t in folding.orders.trades.get(principal.user_id, ())
            if t.pair == market.pair and (order_id is None or t.order_id == order_id)
            and (from_id is None or t.trade_id >= from_id)
            and (start is None or t.ts >= start) and (end is None or t.ts <= end)]
    rows = rows[:limit] if from_id is not None else rows[-limit:]
    u = folding.units[market.pair]
    return json_response([r.my_trade(u, t) for t in rows])


async def account(request: web.Request) -> web.Response:
    principal, params = await authenticate(request)
    markets = request.app[MARKETS]
    folding = request.app[FOLDING]
    have = folding.orders.balances.get(principal.user_id, {})
    balances = []
    updated = 0
    for name, asset in sorted(markets.assets.items()):
        available, held, _version, ts = have.get(name, (0, 0, 0, 0))
        updated = max(updated, ts)
        balances.append({"asset": name, "free": r.fixed(available, asset.decimals),
                         "locked": r.fixed(held, asset.decimals)})
    any_market = next(iter(markets.markets.values()))
    return json_response({
        "makerCommission": any_market.maker_fee_ppm // 100,
        "takerCommission": any_market.taker_fee_ppm // 100,
        "buyerCommission": 0, "sellerCommission": 0,
        "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
        "requireSelfTradePrevention": False, "preventSor": False, "updateTime": updated,
        "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"],
        "uid": principal.user_id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v3/order", new_order)
    app.router.add_get("/api/v3/order", query_order)
    app.router.add_delete("/api/v3/order", cancel_order)
    app.router.add_put("/api/v3/order/amend/keepPriority", amend_keep_priority)
    app.router.add_get("/api/v3/openOrders", open_orders)
    app.router.add_delete("/api/v3/openOrders", cancel_open_orders)
    app.router.add_get("/api/v3/allOrders", all_orders)
    app.router.add_get("/api/v3/myTrades", my_trades)
    app.router.add_get("/api/v3/account", account)
