"""PostgreSQL connections from Settings: one place builds them for every process."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from infra.settings import Settings


def connect(settings: Settings, autocommit: bool = False, connect_timeout: int = 5,
            **kwargs) -> psycopg.Connection:
    return psycopg.connect(settings.postgres_dsn, autocommit=autocommit,
                           connect_timeout=connect_timeout, **kwargs)


def pool(settings: Settings, min_size: int = 1, max_size: int = 4, **kwargs):
    """A psycopg connection pool (opened on first use by the caller's `with`)."""
    from psycopg_pool import ConnectionPool

    return ConnectionPool(settings.postgres_dsn, min_size=min_size, max_size=max_size,
                          open=False, **kwargs)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointed at another database (e.g. `postgres` to create `keel`)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


def ensure_database(dsn: str, connect_timeout: int = 5) -> bool:
    """Create the DSN's database if it is missing (embedded server). True when created."""
    name = database_name(dsn)
    admin = with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=connect_timeout) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False  # another starter created it first
        return True
