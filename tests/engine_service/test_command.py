"""`keel engine` arguments and its supervisor entries (pure: no process is started)."""
from __future__ import annotations

import argparse

import pytest

from infra.commands.engine import engine_processes, parse_partitions, partition_groups
from infra.settings import Settings


def test_partitions_parse_lists_and_all():
    assert parse_partitions("all", 3) == [0, 1, 2]
    assert parse_partitions("2,0", 3) == [0, 2]
    for bad in ("3", "x", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_partitions(bad, 3)


def test_groups_must_cover_every_partition_once():
    assert partition_groups(None, 3) == [[0, 1, 2]]
    assert partition_groups("0,1;2", 3) == [[0, 1], [2]]
    for bad in ("0;2", "0,1;1,2"):
        with pytest.raises(ValueError):
            partition_groups(bad, 3)


def test_supervisor_gets_a_primary_and_a_standby_per_group():
    settings = Settings.from_env({"KEEL_ENGINE_GROUPS": "0,1;2", "KEEL_ENGINE_STANDBY": "1",
                                  "KEEL_METRICS_PORT_BASE": "9000"})
    specs = {s.name: s for s in engine_processes(settings)}
    assert sorted(specs) == ["engine-0-1", "engine-0-1-standby", "engine-2", "engine-2-standby"]
    assert "--standby" in specs["engine-2-standby"].argv
    assert "--standby" not in specs["engine-2"].argv
    ports = {s.health.target for s in specs.values()}
    assert len(ports) == 4                  # no two engines share a metrics port
    assert all(s.depends_on == ("kafka",) for s in specs.values())
    plain = engine_processes(Settings.from_env({}))
    assert [s.name for s in plain] == ["engine"]
