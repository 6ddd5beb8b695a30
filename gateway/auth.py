"""Signed requests, Binance-style: X-MBX-APIKEY names the key, `signature` is the hex
HMAC-SHA256 of the exact received query string followed by the exact body (the
signature parameter itself left out), and `timestamp`/`recvWindow` bound the replay window.

Pure functions over the raw request text; the key lookup is passed in.
"""
from __future__ import annotations

import hmac
import re

from gateway import errors
from gateway.params import Params
from gateway.users import KEY_FORMAT, Principal

_SIG_PARAM = re.compile(r"(^|&)signature=([^&]*)")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60000
FUTURE_TOLERANCE_MS = 1000


def split_signature(text: str) -> tuple[str, str | None]:
    """(text without its signature parameter, the signature) — byte-exact otherwise."""
    match = _SIG_PARAM.search(text)
    if match is None:
        return text, None
    start, end = match.span()
    rest = text[:start] + text[end:]
    if match.group(1) == "" and rest.startswith("&"):
        rest = rest[1:]
    return rest, match.group(2)


def payload_and_signature(query: str, body: str) -> tuple[str, str | None]:
    q, sig_q = split_signature(query)
    b, sig_b = split_signature(body)
    if sig_q is not None and sig_b is not None:
        raise errors.ApiError(-1101, "Duplicate values for parameter 'signature'.")
    return q + b, sig_q if sig_q is not None else sig_b


def sign(secret: str, payload: str) -> str:
    return hmac.digest(secret.encode(), payload.encode(), "sha256").hex()


def check_api_key_format(api_key: str | None) -> str:
    if not api_key or not KEY_FORMAT.match(api_key):
        raise errors.bad_api_key_format()
    return api_key


def check_signature(principal: Principal, query: str, body: str) -> None:
    payload, signature = payload_and_signature(query, body)
    if signature is None or signature == "":
        raise errors.mandatory_missing("signature")
    if not _HEX64.match(signature):
        raise errors.bad_signature()
    # hmac.digest is OpenSSL's one-shot HMAC: no HMAC object, no Python-level key setup
    want = hmac.digest(principal.signing_key, payload.encode(), "sha256").hex()
    if not hmac.compare_digest(want, signature.lower()):
        raise errors.bad_signature()


def check_timestamp(params: Params, now_ms: int) -> None:
    ts = params.integer("timestamp", required=True, low=0)
    window = params.integer("recvWindow", default=DEFAULT_RECV_WINDOW, low=0)
    if window > MAX_RECV_WINDOW:
        raise errors.bad_recv_window()
    if ts >= now_ms + FUTURE_TOLERANCE_MS or now_ms - ts > window:
        raise errors.timestamp_outside_window()
