"""Authentication of SIGNED (and USER_STREAM) endpoints from an aiohttp request."""
from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.auth import check_api_key_format, check_signature, check_timestamp
from gateway.context import CLOCK_MS, FEED, KEYS, PRINCIPAL
from gateway.params import Params
from gateway.users import Principal

MAX_BODY = 64 * 1024


async def read_body(request: web.Request) -> str:
    if not request.can_read_body:
        return ""
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise errors.ApiError(-1100, "Request body is too large.", 413)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise errors.illegal_chars("body") from None


async def api_key_principal(request: web.Request) -> Principal:
    """The key's owner (no signature): for USER_STREAM endpoints such as listenKey."""
    # The edge middleware looked the key up already (only for a well-formed key).
    found = request.get(PRINCIPAL)
    if found is None:
        key = check_api_key_format(request.headers.get("X-MBX-APIKEY"))
        found = await request.app[KEYS].principal(key)
        if found is None:
            raise errors.rejected_api_key()
    return found


async def authenticate(request: web.Request, admin: bool = False) -> tuple[Principal, Params]:
    """(principal, params) of a correctly signed, fresh request; ApiError otherwise."""
    app = request.app
    require_ready(app)
    principal = await api_key_principal(request)
    if admin and not principal.is_admin:
        raise errors.rejected_api_key()
    query = request.rel_url.raw_query_string
    body = await read_body(request) if request.can_read_body else ""
    params = Params(query, body)
    params.integer("timestamp", required=True, low=0)
    check_signature(principal, query, body)
    check_timestamp(params, app[CLOCK_MS]())
    return principal, params


def require_ready(app: web.Application) -> None:
    """Order state is folded from Kafka: until the feed has caught up, say so (503)."""
    feed = app.get(FEED)
    if feed is None or not feed.ready.is_set():
        raise errors.disconnected("The gateway is still catching up with the exchange; "
                                  "retry shortly.")
