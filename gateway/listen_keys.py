"""User-data stream listen keys that any gateway instance can verify: the key carries the
user id and its expiry, signed with a key derived from the gateway master key, so a
client may open /ws/<listenKey> on another instance than the one that issued it.

Binance keys live 60 minutes unless kept alive; a stateless key cannot be extended, so
these live 24 hours and PUT only confirms the key is valid and the caller's. DELETE
revokes it on the instance that receives it (a revocation list per instance).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

LIFETIME_S = 24 * 3600


class ListenKeys:
    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"keel-listen-key", hashlib.sha256).digest()
        self._revoked: dict[str, int] = {}

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def issue(self, user_id: int, now_s: float) -> str:
        nonce = base64.urlsafe_b64encode(os.urandom(9)).decode()
        body = f"{user_id}.{int(now_s) + LIFETIME_S}.{nonce}"
        return f"{body}.{self._mac(body)}"

    def owner(self, key: str, now_s: float) -> int | None:
        """The user id a valid, unexpired, unrevoked key belongs to; None otherwise."""
        parts = key.split(".")
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body), parts[3]):
            return None
        if int(parts[1]) < now_s or key in self._revoked:
            return None
        return int(parts[0])

    def revoke(self, key: str, now_s: float) -> None:
        for old in [k for k, exp in self._revoked.items() if exp < now_s]:
            del self._revoked[old]
        self._revoked[key] = int(key.split(".")[1])
