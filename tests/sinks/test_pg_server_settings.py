"""The embedded PostgreSQL runs with the settings infra/embedded/postgres.py gives it (the
session server of the tests is started by that module's spawn)."""
from __future__ import annotations

import psycopg

from infra.embedded.postgres import SETTINGS


def test_the_embedded_server_runs_with_its_settings(postgres_dsn):
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SHOW wal_init_zero").fetchone()[0] == "off"
        for setting in SETTINGS:
            name, _, value = setting.partition("=")
            assert conn.execute(f"SELECT current_setting('{name}')").fetchone()[0] == value
