"""PostgreSQL migrations: versioned .sql files applied in order, each in one transaction.

A file is `NNNN_what.sql`; its version is NNNN. Every applied file is recorded in
`schema_migrations` (version, name, checksum) in the same transaction as its DDL, so a
crash leaves either the whole migration or none of it. An applied file that was edited
afterwards is refused: fix forward with a new version instead.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
# Every package that owns tables adds its directory here; versions are global.
MIGRATION_DIRS: tuple[Path, ...] = (
    ROOT / "infra" / "migrations",
    ROOT / "sinks" / "migrations",
)
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every Keel migrator.
_ADVISORY_LOCK = 0x6B65656C


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(dirs: tuple[Path, ...] = MIGRATION_DIRS) -> list[Migration]:
    found: dict[int, Migration] = {}
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.sql")):
            match = _NAME.match(path.name)
            if not match:
                raise MigrationError(f"{path}: migration files are named NNNN_what.sql")
            version = int(match.group(1))
            if version in found:
                raise MigrationError(
                    f"migration version {version:04d} is used twice: {found[version].path} "
                    f"and {path}")
            found[version] = Migration(version, path.stem, path)
    return [found[v] for v in sorted(found)]


def applied(conn: psycopg.Connection) -> dict[int, str]:
    """version -> checksum of what the database has already applied."""
    exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
    if exists is None:
        return {}
    return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


def migrate(dsn: str, dirs: tuple[Path, ...] = MIGRATION_DIRS) -> list[Migration]:
    """Apply every pending migration; returns those applied now (empty when up to date)."""
    migrations = discover(dirs)
    done: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        # Two starters racing (two `keel migrate`s) apply each file once.
        conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK,))
        try:
            have = applied(conn)
            for m in migrations:
                if m.version in have:
                    if have[m.version] != m.checksum:
                        raise MigrationError(
                            f"{m.path.name} was changed after it was applied; "
                            "add a new migration instead")
                    continue
                with conn.transaction():
                    conn.execute(m.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)", (m.version, m.name, m.checksum))
                done.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK,))
    return done
