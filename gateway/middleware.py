"""The gateway's one edge middleware: rate limits, error mapping and latency metrics.

Every failure leaves here as Binance JSON `{"code", "msg"}` with a meaningful status:
ApiError (request faults and business rejections) as it says, aiohttp's HTTP errors
(404, 405, 413...) as -1020/-1000 with their status, and anything unexpected as -1000 500
with the traceback logged — an exception is a bug, never how bad input is reported.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from gateway import errors
from gateway.context import CLOCK_MS, KEYS, LIMITER, METRICS, PRINCIPAL
from gateway.ratelimit import WEIGHTS, depth_weight, ticker_weight
from gateway.users import KEY_FORMAT
from infra.logs import event

log = logging.getLogger("keel.gateway")
UNLIMITED = frozenset(("/metrics", "/docs", "/health"))


def error_response(err: errors.ApiError) -> web.Response:
    return web.Response(status=err.status, text=json.dumps(err.body()),
                        content_type="application/json", headers=err.headers)


def request_weight(request: web.Request, path: str) -> int:
    if path == "/api/v3/order":
        # placing and cancelling weigh 1; querying weighs more
        return 1 if request.method != "GET" else WEIGHTS[path]
    if path == "/api/v3/depth":
        try:
            return depth_weight(int(request.query.get("limit", "100")))
        except ValueError:
            return 5
    if path.startswith("/api/v3/ticker"):
        q = request.query
        if "symbol" in q:
            return ticker_weight(1)
        return ticker_weight(None)
    return WEIGHTS.get(path, 1)


async def _principal(request: web.Request, keys):
    key = request.headers.get("X-MBX-APIKEY")
    if key is None or not KEY_FORMAT.match(key):
        return None
    found = await keys.principal(key)
    request[PRINCIPAL] = found
    return found


@web.middleware
async def edge(request: web.Request, handler):
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        verdict = None
        path = request.path
        if path not in UNLIMITED:
            principal = await _principal(request, app[KEYS])
            verdict = app[LIMITER].charge(
                app[CLOCK_MS]() / 1000, request.remote or "?", request_weight(request, path),
                principal.api_key if principal else None,
                principal.tier if principal else "standard")
            if not verdict.allowed:
                app[METRICS].rate_limited.labels(verdict.scope).inc()
                raise errors.too_many_requests(verdict.limit, verdict.scope,
                                               verdict.retry_after)
        response = await handler(request)
        if verdict is not None and not isinstance(response, web.WebSocketResponse):
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(verdict.used_ip)
        status = response.status
        return response
    except errors.ApiError as err:
        status = err.status
        return error_response(err)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        code = -1020 if exc.status in (404, 405) else -1000
        text = exc.reason if exc.status != 404 else f"No such endpoint: {request.path}"
        return error_response(errors.ApiError(code, text, exc.status))
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception:
        event(log, "unhandled error", logging.ERROR, route=route, method=request.method)
        log.exception("unhandled error in %s %s", request.method, route)
        return error_response(errors.unknown_error())
    finally:
        app[METRICS].for_route(route, request.method).observe(time.perf_counter() - started,
                                                              status)
