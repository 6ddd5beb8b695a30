"""Migrations: applied in order, each in one transaction, recorded, never twice."""
from __future__ import annotations

import psycopg
import pytest

from infra.migrate import MIGRATION_DIRS, MigrationError, discover, migrate


def _write(dir_, name, sql):
    (dir_ / name).write_text(sql)


def test_the_shipped_migrations_apply_once(make_database):
    dsn = make_database()
    first = migrate(dsn)
    assert [m.version for m in first] == [m.version for m in discover(MIGRATION_DIRS)]
    assert first and first[0].version == 1
    assert migrate(dsn) == []
    with psycopg.connect(dsn) as conn:
        versions = [r[0] for r in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in first]


def test_a_failing_migration_leaves_nothing_behind(make_database, tmp_path):
    dsn = make_database()
    _write(tmp_path, "0001_schema_migrations.sql", (MIGRATION_DIRS[0] /
           "0001_schema_migrations.sql").read_text())
    _write(tmp_path, "0002_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY);")
    _write(tmp_path, "0003_broken.sql",
           "CREATE TABLE half (id int); SELECT * FROM no_such_table;")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(dsn, (tmp_path,))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('orders')").fetchone() == ("orders",)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1, 2]
    # Fixed forward: the broken file is replaced and the run resumes at 0003.
    _write(tmp_path, "0003_broken.sql", "CREATE TABLE half (id int);")
    assert [m.version for m in migrate(dsn, (tmp_path,))] == [3]


def test_an_edited_applied_migration_is_refused(make_database, tmp_path):
    dsn = make_database()
    _write(tmp_path, "0001_schema_migrations.sql", (MIGRATION_DIRS[0] /
           "0001_schema_migrations.sql").read_text())
    _write(tmp_path, "0002_t.sql", "CREATE TABLE t (id int);")
    migrate(dsn, (tmp_path,))
    _write(tmp_path, "0002_t.sql", "CREATE TABLE t (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(dsn, (tmp_path,))


def test_file_names_and_versions_are_checked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _write(a, "0001_x.sql", "SELECT 1;")
    _write(b, "0001_y.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="used twice"):
        discover((a, b))
    _write(a, "two.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_what.sql"):
        discover((a,))
