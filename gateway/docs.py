"""The OpenAPI 3 document of what the gateway serves, at /docs (JSON).

Built from one table of endpoints so the document and the routes are reviewed together;
tests/gateway checks that every route in the table is really served and runs schemathesis
against it.
"""
from __future__ import annotations

from aiohttp import web

from engine.markets import MarketsConfig
from gateway.market import INTERVALS
from gateway.public import json_response

_S = {"type": "string"}
_I = {"type": "integer", "format": "int64"}
_DEC = {"type": "string", "pattern": r"^[0-9]{1,20}(\.[0-9]{1,18})?$"}
_SIGNED = [("timestamp", _I, True), ("recvWindow", _I, False), ("signature", _S, True)]


def _endpoints(markets: MarketsConfig) -> list[tuple[str, str, str, str, list]]:
    symbol = {"type": "string", "enum": sorted(markets.markets)}
    sym = [("symbol", symbol, True)]
    opt_sym = [("symbol", symbol, False)]
    order_ref = [("orderId", _I, False), ("origClientOrderId", _S, False)]
    return [
        # (method, path, security, summary, [(name, schema, required)])
        ("get", "/api/v3/ping", "NONE", "Test connectivity", []),
        ("get", "/api/v3/time", "NONE", "Server time", []),
        ("get", "/api/v3/exchangeInfo", "NONE", "Symbols, filters and rate limits",
         opt_sym + [("symbols", _S, False)]),
        ("get", "/api/v3/depth", "NONE", "Order book (lastUpdateId on the @depth id sequence)",
         sym + [("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, False)]),
        ("get", "/api/v3/trades", "NONE", "Recent trades",
         sym + [("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, False)]),
        ("get", "/api/v3/aggTrades", "NONE", "Aggregate trades",
         sym + [("fromId", _I, False), ("startTime", _I, False), ("endTime", _I, False),
                ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, False)]),
        ("get", "/api/v3/klines", "NONE", "Candles",
         sym + [("interval", {"type": "string", "enum": list(INTERVALS)}, True),
                ("startTime", _I, False), ("endTime", _I, False),
                ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, False)]),
        ("get", "/api/v3/ticker/24hr", "NONE", "24 h statistics", opt_sym),
        ("get", "/api/v3/ticker/price", "NONE", "Last price", opt_sym),
        ("get", "/api/v3/ticker/bookTicker", "NONE", "Best bid and ask", opt_sym),
        ("post", "/api/v3/order", "SIGNED", "New order", sym + [
            ("side", {"type": "string", "enum": ["BUY", "SELL"]}, True),
            ("type", {"type": "string", "enum": ["LIMIT", "MARKET", "LIMIT_MAKER"]}, True),
            ("timeInForce", {"type": "string", "enum": ["GTC", "IOC", "FOK"]}, False),
            ("quantity", _DEC, False), ("quoteOrderQty", _DEC, False), ("price", _DEC, False),
            ("newClientOrderId", _S, False),
            ("newOrderRespType", {"type": "string", "enum": ["ACK", "RESULT", "FULL"]}, False),
            ("selfTradePreventionMode", {"type": "string", "enum": [
                "NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]}, False)] + _SIGNED),
        ("get", "/api/v3/order", "SIGNED", "Query order", sym + order_ref + _SIGNED),
        ("delete", "/api/v3/order", "SIGNED", "Cancel order", sym + order_ref + _SIGNED),
        ("put", "/api/v3/order/amend/keepPriority", "SIGNED",
         "Reduce an order's quantity keeping its priority",
         sym + order_ref + [("newQty", _DEC, True)] + _SIGNED),
        ("get", "/api/v3/openOrders", "SIGNED", "Open orders", opt_sym + _SIGNED),
        ("delete", "/api/v3/openOrders", "SIGNED", "Cancel all open orders on a symbol",
         sym + _SIGNED),
        ("get", "/api/v3/allOrders", "SIGNED", "All orders", sym + [
            ("orderId", _I, False), ("startTime", _I, False), ("endTime", _I, False),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, False)] + _SIGNED),
        ("get", "/api/v3/myTrades", "SIGNED", "Account trades", sym + [
            ("orderId", _I, False), ("fromId", _I, False), ("startTime", _I, False),
            ("endTime", _I, False),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, False)] + _SIGNED),
        ("get", "/api/v3/account", "SIGNED", "Balances", _SIGNED),
        ("post", "/api/v3/userDataStream", "USER_STREAM", "Start a user data stream", []),
        ("put", "/api/v3/userDataStream", "USER_STREAM", "Keep a user data stream alive",
         [("listenKey", _S, True)]),
        ("delete", "/api/v3/userDataStream", "USER_STREAM", "Close a user data stream",
         [("listenKey", _S, True)]),
        ("post", "/api/v3/admin/deposit", "ADMIN", "Credit a user (admin key)", [
            ("userId", _I, True), ("asset", _S, True), ("amount", _DEC, True),
            ("reference", _S, False)] + _SIGNED),
        ("post", "/api/v3/admin/withdraw", "ADMIN", "Withdraw for a user (admin key)", [
            ("userId", _I, True), ("asset", _S, True), ("amount", _DEC, True),
            ("destination", _S, False)] + _SIGNED),
        ("post", "/api/v3/admin/withdrawalResult", "ADMIN",
         "Settle (completed=true) or release (false) a withdrawal (admin key)", [
            ("userId", _I, True), ("withdrawalId", _S, True), ("asset", _S, True),
            ("amount", _DEC, True), ("completed", {"type": "string", "enum": ["true", "false"]},
                                     True), ("reference", _S, False)] + _SIGNED),
    ]


ERROR = {"type": "object", "required": ["code", "msg"],
         "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}}}


def openapi(markets: MarketsConfig) -> dict:
    paths: dict[str, dict] = {}
    for method, path, security, summary, params in _endpoints(markets):
        op = {
            "summary": summary,
            "parameters": [{"name": n, "in": "query", "required": req, "schema": schema}
                           for n, schema, req in params],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "4XX": {"description": "Binance-style error",
                        "content": {"application/json": {"schema": ERROR}}},
                "503": {"description": "Backend timeout (-1007): execution status unknown",
                        "content": {"application/json": {"schema": ERROR}}},
            },
        }
        if security != "NONE":
            op["security"] = [{"apiKey": []}]
            op["x-security-type"] = security
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Keel gateway (Binance spot API v3 compatible)", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-MBX-APIKEY"}}},
    }


def add_routes(app: web.Application, markets: MarketsConfig) -> None:
    document = openapi(markets)

    async def docs(request: web.Request) -> web.Response:
        return json_response(document)

    app.router.add_get("/docs", docs)
