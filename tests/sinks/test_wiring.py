"""How the sinks are wired: supervisor registration and the keel sql statement check."""
from __future__ import annotations

import pytest

from infra.commands.sql import refusal
from infra.processes import all_processes
from infra.settings import Settings


def test_embedded_the_chdb_owner_is_the_clickhouse_sink_and_postgres_sink_is_supervised():
    specs = {s.name: s for s in all_processes(Settings())}
    assert specs["clickhouse"].argv[-2:] == ("sink", "clickhouse")
    assert specs["clickhouse"].service
    pg = specs["sink-postgres"]
    assert pg.argv[-4:] == ("sink", "postgres", "--metrics-port", "9440")
    assert pg.health.target == "http://127.0.0.1:9440/metrics"
    assert set(pg.depends_on) == {"kafka", "postgres"}
    assert "sink-clickhouse" not in specs


def test_a_clickhouse_server_gets_its_own_sink_process():
    specs = {s.name: s for s in all_processes(Settings(clickhouse_url="http://ch:8123/keel"))}
    assert "clickhouse" not in specs
    assert specs["sink-clickhouse"].argv[-4:] == ("sink", "clickhouse", "--metrics-port", "9441")


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  select * from trades", "WITH x AS (SELECT 1) SELECT * FROM x",
    "(SELECT 1) UNION ALL (SELECT 2)", "SHOW TABLES", "DESCRIBE trades", "EXPLAIN SELECT 1",
    "SELECT 1;", "-- a comment\nSELECT 1", "SELECT ';' AS semicolon_in_a_string"])
def test_reads_pass_the_statement_check(sql):
    assert refusal(sql) is None


@pytest.mark.parametrize("sql", [
    "INSERT INTO trades VALUES (1)", "DROP TABLE trades", "ALTER TABLE trades DELETE WHERE 1",
    "TRUNCATE trades", "CREATE TABLE x (a Int8) ENGINE = Memory", "SET readonly = 0",
    "SELECT 1; DROP TABLE trades", "SYSTEM SHUTDOWN", "OPTIMIZE TABLE trades FINAL",
    "SELECT * FROM trades INTO OUTFILE 'x.csv'", "", "/* hidden */ DELETE FROM trades WHERE 1",
    "SELECT 'a'; DROP TABLE trades"])
def test_writes_and_ddl_are_refused(sql):
    assert refusal(sql) is not None
