"""API secrets at rest: sealed under a master key that lives outside the database.

HMAC verification needs the secret itself (a hash would not do), so the database holds
it encrypted: nonce || (secret XOR HMAC-SHA256 keystream) || HMAC-SHA256 tag, with
separate encryption and tag keys derived from the master key. Only the standard library
is used (no new dependency); the construction is a PRF in counter mode, encrypt-then-MAC.

The master key comes from KEEL_GATEWAY_MASTER_KEY, or else from <data_dir>/gateway.key,
created with mode 0600 on first use so that `keel users create` and `keel gateway` on one
machine agree without configuration.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from infra.settings import Secret, Settings

NONCE, TAG = 16, 32


class VaultError(ValueError):
    """A sealed secret failed its integrity check (wrong master key or damaged row)."""


class Vault:
    def __init__(self, master: bytes) -> None:
        if len(master) < 16:
            raise VaultError("the gateway master key must be at least 16 bytes")
        self._enc = hmac.new(master, b"keel-vault-enc", hashlib.sha256).digest()
        self._mac = hmac.new(master, b"keel-vault-mac", hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        configured = settings.extra.get("KEEL_GATEWAY_MASTER_KEY", "").strip()
        if configured:
            return cls(Secret(configured).reveal().encode())
        path = settings.data_dir / "gateway.key"
        return cls(_key_file(path))

    def derive(self, label: bytes) -> bytes:
        """A key for another purpose (e.g. listen keys), independent of the sealing keys."""
        return hmac.new(self._mac, b"derive:" + label, hashlib.sha256).digest()

    def _stream(self, nonce: bytes, length: int) -> bytes:
        out = bytearray()
        counter = 0
        while len(out) < length:
            out += hmac.new(self._enc, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest()
            counter += 1
        return bytes(out[:length])

    def seal(self, secret: str) -> bytes:
        plain = secret.encode()
        nonce = os.urandom(NONCE)
        body = bytes(a ^ b for a, b in zip(plain, self._stream(nonce, len(plain)), strict=True))
        tag = hmac.new(self._mac, nonce + body, hashlib.sha256).digest()
        return nonce + body + tag

    def open(self, box: bytes) -> Secret:
        box = bytes(box)
        if len(box) < NONCE + TAG:
            raise VaultError("sealed secret is too short")
        nonce, body, tag = box[:NONCE], box[NONCE:-TAG], box[-TAG:]
        want = hmac.new(self._mac, nonce + body, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, want):
            raise VaultError("sealed secret failed its integrity check")
        plain = bytes(a ^ b for a, b in zip(body, self._stream(nonce, len(body)), strict=True))
        return Secret(plain.decode())


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()      # another process made it first
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key
