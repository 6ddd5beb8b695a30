"""`keel users create` on a real PostgreSQL: prints the key and secret once, stores the
secret sealed (never in plain text), refuses a duplicate name, and the gateway's key
store resolves the key to the same secret."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import psycopg

from gateway.users import KeyStore
from gateway.vault import Vault
from infra.settings import Settings
from tests.gateway.conftest import MASTER, REPO, fresh_database


def keel_users(dsn: str, data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEEL_POSTGRES_URL": dsn, "KEEL_DATA_DIR": str(data_dir),
           "KEEL_GATEWAY_MASTER_KEY": MASTER}
    return subprocess.run([sys.executable, "-m", "infra.cli", "users", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def test_users_create_seals_the_secret(postgres_dsn, tmp_path):
    dsn = fresh_database(postgres_dsn)
    made = keel_users(dsn, tmp_path, "create", "dana", "--tier", "vip")
    assert made.returncode == 0, made.stdout + made.stderr
    user = json.loads(made.stdout)
    assert len(user["apiKey"]) == 64 and len(user["secretKey"]) == 64
    assert user["tier"] == "vip" and user["admin"] is False
    assert user["secretKey"] not in made.stderr
    with psycopg.connect(dsn) as conn:
        dump = conn.execute("SELECT k.api_key, k.secret_box::text, u.tier FROM gateway_api_keys k "
                            "JOIN gateway_users u USING (user_id)").fetchall()
    assert [(k, tier) for k, _, tier in dump] == [(user["apiKey"], "vip")]
    box = dump[0][1]
    assert user["secretKey"] not in box and user["secretKey"].encode().hex() not in box
    again = keel_users(dsn, tmp_path, "create", "dana")
    assert again.returncode == 1 and "already exists" in again.stdout

    async def lookup():
        from psycopg_pool import AsyncConnectionPool

        settings = Settings(postgres_url=dsn, extra={"KEEL_GATEWAY_MASTER_KEY": MASTER})
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            store = KeyStore(pool, Vault.from_settings(settings))
            found = await store.principal(user["apiKey"])
            missing = await store.principal("B" * 64)
        return found, missing
    found, missing = asyncio.run(lookup())
    assert missing is None
    assert found.user_id == user["userId"] and found.tier == "vip"
    assert found.secret.reveal() == user["secretKey"]
    assert user["secretKey"] not in repr(found)


def test_a_key_sealed_under_another_master_key_is_refused_and_logged(postgres_dsn, tmp_path,
                                                                      caplog):
    """A gateway whose master key differs from the one `keel users create` used cannot open
    the secret: the key resolves to nobody (the client gets -2015, not a 500) and the
    operator gets one error line naming the cause."""
    dsn = fresh_database(postgres_dsn)
    made = keel_users(dsn, tmp_path, "create", "erin")
    assert made.returncode == 0, made.stdout + made.stderr
    user = json.loads(made.stdout)

    async def lookup(master: str):
        from psycopg_pool import AsyncConnectionPool

        settings = Settings(postgres_url=dsn, extra={"KEEL_GATEWAY_MASTER_KEY": master})
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            store = KeyStore(pool, Vault.from_settings(settings))
            return [await store.principal(user["apiKey"]) for _ in range(3)]
    with caplog.at_level("ERROR", logger="keel.gateway"):
        wrong = asyncio.run(lookup("another-master-key-of-enough-length"))
    assert wrong == [None, None, None]
    lines = [r for r in caplog.records if "master key" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    fields = lines[0].fields
    assert fields["user_id"] == user["userId"] and user["apiKey"] not in str(fields)
    right = asyncio.run(lookup(MASTER))
    assert right[0] is not None and right[0].secret.reveal() == user["secretKey"]
