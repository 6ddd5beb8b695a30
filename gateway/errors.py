"""Binance error codes and HTTP statuses: every rejection the gateway answers, in one place.

Business outcomes arrive as engine.domain.ResultCode values (accounts' replies, engine
Rejected events); request faults are raised here as `ApiError`. The middleware in
gateway.app turns either into `{"code": ..., "msg": ...}` with the right HTTP status, so
no handler builds an error response itself and bad input never becomes a bare 500.
"""
from __future__ import annotations

from engine.domain import ResultCode


class ApiError(Exception):
    """A request the gateway refuses: a Binance code, its message and the HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict:
        return {"code": self.code, "msg": self.msg}


# ---- request faults (-1xxx) ----

def unknown_error(msg: str = "An unknown error occurred while processing the request.") -> ApiError:
    return ApiError(-1000, msg, 500)


def disconnected(msg: str = "Internal error; unable to process your request. Please try again.") -> ApiError:
    return ApiError(-1001, msg, 503)


def unauthorized() -> ApiError:
    return ApiError(-1002, "You are not authorized to execute this request.", 401)


def too_many_requests(limit: int, scope: str, retry_after: int) -> ApiError:
    return ApiError(-1003, f"Too many requests; current limit of {scope} request weight per "
                    f"minute is {limit}. Use WebSocket streams for live updates to avoid polling.",
                    429, {"Retry-After": str(retry_after)})


def backend_timeout() -> ApiError:
    # The request reached Kafka; whether it executed is not known yet. The client can query
    # the order (by newClientOrderId) to learn its fate.
    return ApiError(-1007, "Timeout waiting for response from backend server. Send status "
                    "unknown; execution status unknown.", 503)


def timestamp_outside_window() -> ApiError:
    return ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")


def bad_signature() -> ApiError:
    return ApiError(-1022, "Signature for this request is not valid.")


def illegal_chars(name: str) -> ApiError:
    return ApiError(-1100, f"Illegal characters found in parameter '{name}'.")


def mandatory_missing(name: str) -> ApiError:
    return ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or "
                    "malformed.")


def unread_params(names: list[str]) -> ApiError:
    return ApiError(-1104, f"Not all sent parameters were read; read {len(names)} "
                    f"parameter(s) but was sent more: {', '.join(sorted(names))}.")


def param_empty(name: str) -> ApiError:
    return ApiError(-1105, f"Parameter '{name}' was empty.")


def param_not_required(name: str) -> ApiError:
    return ApiError(-1106, f"Parameter '{name}' sent when not required.")


def bad_precision(name: str) -> ApiError:
    return ApiError(-1111, f"Parameter '{name}' has too much precision.")


def invalid_tif() -> ApiError:
    return ApiError(-1115, "Invalid timeInForce.")


def invalid_order_type() -> ApiError:
    return ApiError(-1116, "Invalid orderType.")


def invalid_side() -> ApiError:
    return ApiError(-1117, "Invalid side.")


def invalid_interval() -> ApiError:
    return ApiError(-1120, "Invalid interval.")


def invalid_symbol() -> ApiError:
    return ApiError(-1121, "Invalid symbol.")


def invalid_listen_key() -> ApiError:
    return ApiError(-1125, "This listenKey does not exist.")


def bad_recv_window() -> ApiError:
    return ApiError(-1131, "recvWindow must be less than 60000")


def invalid_param(name: str, why: str = "") -> ApiError:
    return ApiError(-1100 if not why else -1130,
                    f"Invalid data sent for a parameter '{name}'{': ' + why if why else '.'}")


def bad_api_key_format() -> ApiError:
    return ApiError(-2014, "API-key format invalid.", 401)


def rejected_api_key() -> ApiError:
    return ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)


def not_found(path: str) -> ApiError:
    return ApiError(-1020, f"This operation is not supported: {path}", 404)


# ---- business outcomes (ResultCode) -> Binance ----

_FILTER = {
    ResultCode.TICK_VIOLATION: "PRICE_FILTER",
    ResultCode.LOT_VIOLATION: "LOT_SIZE",
    ResultCode.BELOW_MIN_NOTIONAL: "NOTIONAL",
}

_MESSAGES = {
    ResultCode.INVALID_REQUEST: (-1100, "Illegal parameters in the request."),
    ResultCode.UNKNOWN_PAIR: (-1121, "Invalid symbol."),
    ResultCode.INSUFFICIENT_BALANCE: (-2010, "Account has insufficient balance for requested action."),
    ResultCode.DUPLICATE_CLIENT_ORDER_ID: (-2010, "Duplicate order sent."),
    ResultCode.DUPLICATE_REQUEST: (-2010, "Duplicate order sent."),
    ResultCode.UNKNOWN_ASSET: (-1100, "Unknown asset."),
    ResultCode.TOO_MANY_OPEN_ORDERS: (-2010, "Filter failure: EXCHANGE_MAX_NUM_ORDERS"),
    ResultCode.INVALID_PRICE: (-1013, "Invalid price."),
    ResultCode.INVALID_QUANTITY: (-1013, "Invalid quantity."),
    ResultCode.MARKET_CLOSED: (-2010, "Market is closed."),
    ResultCode.DUPLICATE_ORDER_ID: (-2010, "Duplicate order sent."),
    ResultCode.POST_ONLY_WOULD_CROSS: (-2010, "Order would immediately match and take."),
    ResultCode.FOK_NOT_FILLABLE: (-2010, "Order would not be filled completely (FOK)."),
    ResultCode.SELF_TRADE_PREVENTED: (-2010, "Order was prevented from trading with itself."),
    ResultCode.AMEND_WOULD_CROSS: (-2010, "Amended price would cross the book."),
    # The engine refuses an amend above the order's remaining quantity (fills the gateway
    # has not folded yet make a valid-looking newQty too large).
    ResultCode.AMEND_WOULD_ENLARGE: (-2010, "Amend would enlarge the order (it may have "
                                     "filled meanwhile); query it and retry, or cancel and "
                                     "place a new order."),
}


def from_result(code: int, action: str = "order") -> ApiError:
    """The Binance error for a business rejection. `action` is 'order' (new order),
    'cancel' or 'query': an unknown order reads -2011 on cancel and -2013 on query."""
    try:
        rc = ResultCode(code)
    except ValueError:
        return ApiError(-1000, f"Rejected with unknown result code {code}.", 400)
    if rc in _FILTER:
        return ApiError(-1013, f"Filter failure: {_FILTER[rc]}")
    if rc in (ResultCode.UNKNOWN_ORDER, ResultCode.NOT_ORDER_OWNER):
        # A foreign order is reported exactly like a missing one: no existence leak.
        if action == "query":
            return ApiError(-2013, "Order does not exist.")
        return ApiError(-2011, "Unknown order sent.")
    if action == "cancel" and rc is not ResultCode.UNKNOWN_PAIR:
        return ApiError(-2011, _MESSAGES.get(rc, (0, rc.name))[1])
    bcode, msg = _MESSAGES.get(rc, (-1000, rc.name))
    return ApiError(bcode, msg)
