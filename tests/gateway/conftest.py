"""The whole real stack for gateway end-to-end tests, started once per module:
tansu broker and PostgreSQL (session fixtures), `keel engine`, `keel streams accounts`
and `keel streams settlement` as subprocesses on a topic prefix of their own, a fresh
database with the gateway's users. The gateway itself is served in-process per test."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from engine.markets import MarketsConfig, load_markets
from gateway.users import NewUser, create_user
from gateway.vault import Vault
from infra.embedded import stop_child
from infra.migrate import migrate
from infra.postgres import with_database
from infra.settings import DEFAULT_MARKETS, Settings

REPO = Path(__file__).resolve().parents[2]
MASTER = "test-master-key-0123456789abcdef"


@dataclass
class Stack:
    settings: Settings
    markets: MarketsConfig
    users: dict[str, NewUser]
    procs: list[subprocess.Popen]
    log_dir: Path

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:]
                         for p in sorted(self.log_dir.glob("*.log")))

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise AssertionError(f"a stack process exited with {proc.returncode}:\n"
                                     f"{self.logs()}")


def make_settings(kafka_bootstrap: str, dsn: str, data_dir: Path, **extra: str) -> Settings:
    from infra import topics
    from infra.kafka import admin_client

    env = {"KEEL_GATEWAY_MASTER_KEY": MASTER, **extra}
    settings = Settings(data_dir=data_dir, kafka_bootstrap=kafka_bootstrap, postgres_url=dsn,
                        topic_prefix=f"g{uuid.uuid4().hex[:8]}.", user_partitions=4,
                        log_level="INFO", extra=env)
    outcomes = topics.ensure_topics(admin_client(settings, log_level=0),
                                    topics.plan(settings, load_markets(DEFAULT_MARKETS)))
    assert all(o.ok for o in outcomes), outcomes
    return settings


def fresh_database(postgres_dsn: str) -> str:
    name = f"gw_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(with_database(postgres_dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_database(postgres_dsn, name)
    migrate(dsn)
    return dsn


def make_users(settings: Settings, names: dict[str, dict]) -> dict[str, NewUser]:
    vault = Vault.from_settings(settings)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        return {name: create_user(conn, vault, name, **opts) for name, opts in names.items()}


def spawn(settings: Settings, log_dir: Path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, **settings.extra, "KEEL_KAFKA_BOOTSTRAP": settings.bootstrap,
           "KEEL_TOPIC_PREFIX": settings.topic_prefix, "KEEL_DATA_DIR": str(settings.data_dir),
           "KEEL_USER_PARTITIONS": str(settings.user_partitions), "KEEL_LOG_LEVEL": "INFO",
           "KEEL_POSTGRES_URL": settings.postgres_dsn}
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, process_group=0)
    log.close()
    return proc


def stop(proc: subprocess.Popen) -> None:
    stop_child(proc, timeout=20)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("stack")
    settings = make_settings(kafka_bootstrap, fresh_database(postgres_dsn), directory / "keel")
    users = make_users(settings, {"alice": {}, "bob": {}, "mm": {"tier": "vip"},
                                  "ops": {"admin": True}})
    procs = [
        spawn(settings, directory, "engine", "engine", "--partitions", "all",
              "--metrics-port", "0"),
        spawn(settings, directory, "accounts", "streams", "accounts", "--metrics-port", "0"),
        spawn(settings, directory, "settlement", "streams", "settlement", "--metrics-port", "0"),
    ]
    s = Stack(settings, load_markets(DEFAULT_MARKETS), users, procs, directory)
    try:
        yield s
    finally:
        for proc in procs:
            stop(proc)
