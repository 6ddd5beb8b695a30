"""Users and API keys in PostgreSQL: created by `keel users create`, looked up by the gateway.

A key resolves to a `Principal` (who, which rate tier, admin or not, and the secret to
verify signatures with). The gateway caches lookups briefly so a signed request costs no
database round trip, and caches misses too so a flood of bogus keys cannot hammer the DB.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass

import psycopg

from gateway.vault import Vault, VaultError
from infra.logs import event
from infra.settings import Secret

log = logging.getLogger("keel.gateway")

KEY_FORMAT = re.compile(r"^[A-Za-z0-9]{64}$")
TIERS = ("standard", "vip")


@dataclass(frozen=True)
class Principal:
    user_id: int
    tier: str
    is_admin: bool
    api_key: str
    secret: Secret

    def __repr__(self) -> str:                 # never show the secret
        return f"Principal(user_id={self.user_id}, tier={self.tier!r}, admin={self.is_admin})"

    @property
    def signing_key(self) -> bytes:
        """The secret as the HMAC key, encoded once per cached principal, not per request."""
        key = self.__dict__.get("_signing_key")
        if key is None:
            key = self.secret.reveal().encode()
            object.__setattr__(self, "_signing_key", key)
        return key


@dataclass(frozen=True)
class NewUser:
    user_id: int
    name: str
    api_key: str
    secret: Secret


def new_token() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(64))


def create_user(conn: psycopg.Connection, vault: Vault, name: str, tier: str = "standard",
                admin: bool = False) -> NewUser:
    """A user and its first API key, in one transaction. The secret is returned once."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}")
    api_key, secret = new_token(), new_token()
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO gateway_users (name, tier, is_admin) VALUES (%s, %s, %s) "
            "RETURNING user_id", (name, tier, admin)).fetchone()
        conn.execute("INSERT INTO gateway_api_keys (api_key, user_id, secret_box) "
                     "VALUES (%s, %s, %s)", (api_key, row[0], vault.seal(secret)))
    return NewUser(row[0], name, api_key, Secret(secret))


_LOOKUP = ("SELECT u.user_id, u.tier, u.is_admin, k.secret_box FROM gateway_api_keys k "
           "JOIN gateway_users u USING (user_id) WHERE k.api_key = %s AND k.enabled")


class KeyStore:
    """API key -> Principal, from PostgreSQL through a small async pool, cached."""

    def __init__(self, pool, vault: Vault, ttl_s: float = 30.0, miss_ttl_s: float = 2.0) -> None:
        self.pool = pool
        self.vault = vault
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def principal(self, api_key: str) -> Principal | None:
        now = time.monotonic()
        hit = self._cache.get(api_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LOOKUP, (api_key,))
            row = await cur.fetchone()
        found = None
        if row is not None:
            try:
                found = Principal(row[0], row[1], row[2], api_key, self.vault.open(row[3]))
            except VaultError as err:
                # The key exists but its secret was sealed under another master key (a
                # different KEEL_GATEWAY_MASTER_KEY or <data_dir>/gateway.key than the one
                # `keel users create` used): the client sees an invalid key (-2015), the
                # operator this line, once per key per miss-cache period.
                event(log, "api key unusable: its secret does not open with this gateway's "
                      "master key (KEEL_GATEWAY_MASTER_KEY or <data_dir>/gateway.key differs "
                      "from the one that created it)", logging.ERROR,
                      api_key=api_key[:8] + "…", user_id=row[0], error=str(err))
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[api_key] = (now + (self.ttl_s if found else self.miss_ttl_s), found)
        return found
