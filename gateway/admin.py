"""Admin endpoints behind an admin key (signed like any SIGNED endpoint): deposits and
withdrawals, forwarded to accounts as funding requests for the named user."""
from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from gateway import errors
from gateway.context import BUS, CLOCK_MS, MARKETS
from gateway.params import Params
from gateway.public import json_response
from gateway.signed import authenticate


def _amount(params: Params, decimals: int) -> int:
    amount = params.decimal("amount", required=True)
    units = amount * (Decimal(10) ** decimals)
    if units != units.to_integral_value():
        raise errors.bad_precision("amount")
    if units <= 0 or units >= 2 ** 62:
        raise errors.ApiError(-1100, "Illegal value for parameter 'amount'.")
    return int(units)


async def _funding(request: web.Request, branch: str, extra: str) -> web.Response:
    _principal, params = await authenticate(request, admin=True)
    user_id = params.integer("userId", required=True, low=1, high=2 ** 62)
    asset_name = params.text("asset", required=True)
    asset = request.app[MARKETS].assets.get(asset_name)
    if asset is None:
        raise errors.ApiError(-1100, f"Unknown asset '{asset_name}'.")
    body = {"asset": asset.name, "amount": _amount(params, asset.decimals),
            extra: params.text(extra)}
    bus = request.app[BUS]
    request_id = bus.new_request_id()
    reply = await bus.ask(user_id, request.app[CLOCK_MS](), (branch, body), request_id)
    if reply["code"] != 0:
        raise errors.from_result(reply["code"])
    return json_response({"id": request_id, "userId": user_id, "asset": asset.name,
                          "amount": params.text("amount"), "status": "OK"})


async def deposit(request: web.Request) -> web.Response:
    return await _funding(request, "keel.Deposit", "reference")


async def withdraw(request: web.Request) -> web.Response:
    return await _funding(request, "keel.Withdraw", "destination")


async def withdrawal_result(request: web.Request) -> web.Response:
    """The payment side's outcome of a withdrawal (its `id` from /admin/withdraw):
    completed=true settles the held funds, false releases them."""
    _principal, params = await authenticate(request, admin=True)
    user_id = params.integer("userId", required=True, low=1, high=2 ** 62)
    withdrawal_id = params.text("withdrawalId", required=True)
    asset_name = params.text("asset", required=True)
    asset = request.app[MARKETS].assets.get(asset_name)
    if asset is None:
        raise errors.ApiError(-1100, f"Unknown asset '{asset_name}'.")
    completed = params.choice("completed", ("true", "false"), required=True) == "true"
    body = {"withdrawal_request_id": withdrawal_id, "asset": asset.name,
            "amount": _amount(params, asset.decimals), "completed": completed,
            "reference": params.text("reference")}
    reply = await request.app[BUS].ask(user_id, request.app[CLOCK_MS](),
                                       ("keel.WithdrawalResult", body))
    if reply["code"] != 0:
        raise errors.from_result(reply["code"])
    return json_response({"id": withdrawal_id, "userId": user_id,
                          "status": "COMPLETED" if completed else "FAILED"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v3/admin/deposit", deposit)
    app.router.add_post("/api/v3/admin/withdraw", withdraw)
    app.router.add_post("/api/v3/admin/withdrawalResult", withdrawal_result)
