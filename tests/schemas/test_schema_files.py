"""The .avsc files are the contract data engineers read: they must parse with both
Avro implementations, document every field, keep money integral, and mirror engine.domain."""
from __future__ import annotations

import json
import shutil

import avro.schema
import fastavro
import pytest

from engine.domain import EVENT_TYPES
from schemas.catalog import (
    SCHEMA_DIR,
    TOPIC_SCHEMAS,
    CatalogError,
    default_catalog,
    load_catalog,
)
from schemas.records import COMMAND_TYPES, ENVELOPE

NAMES = sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))
RAW = {name: json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()) for name in NAMES}


def test_every_topic_has_exactly_one_schema_file():
    assert sorted(TOPIC_SCHEMAS.values()) == NAMES
    assert len(NAMES) == 11


@pytest.mark.parametrize("name", NAMES)
def test_parses_with_fastavro_and_avro(name):
    text = (SCHEMA_DIR / f"{name}.avsc").read_text()
    fastavro.parse_schema(json.loads(text), named_schemas={})
    parsed = avro.schema.parse(text)
    assert parsed.fullname.startswith("keel.")
    # Both implementations agree on the fingerprint the codec frames with.
    assert parsed.fingerprint() == default_catalog().current[name].fingerprint


def _walk(schema, path, out):
    """Every (path, field) pair and every primitive type name, through unions, arrays, maps."""
    if isinstance(schema, str):
        out["types"].append((path, schema))
    elif isinstance(schema, list):
        for branch in schema:
            _walk(branch, path, out)
    elif schema["type"] == "record":
        out["records"].append((path, schema))
        for field in schema["fields"]:
            out["fields"].append((f"{path}.{field['name']}", field))
            _walk(field["type"], f"{path}.{field['name']}", out)
    elif schema["type"] == "array":
        _walk(schema["items"], path + "[]", out)
    elif schema["type"] == "map":
        _walk(schema["values"], path + "{}", out)
    else:
        out["types"].append((path, schema["type"]))


def _parts(name):
    out = {"fields": [], "records": [], "types": []}
    _walk(RAW[name], name, out)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_record_and_field_is_documented(name):
    parts = _parts(name)
    undocumented = [path for path, f in parts["fields"] + parts["records"]
                    if not str(f.get("doc", "")).strip()]
    assert undocumented == []
    assert RAW[name]["namespace"] == "keel"


@pytest.mark.parametrize("name", NAMES)
def test_no_floating_point_and_no_logical_types(name):
    parts = _parts(name)
    assert [p for p, t in parts["types"] if t in ("float", "double")] == []
    # Timestamps stay plain longs: a logical type would decode to datetime and break
    # the exact round trip of engine events.
    assert "logicalType" not in json.dumps(RAW[name])


@pytest.mark.parametrize("name", NAMES)
def test_enum_like_ints_name_their_values(name):
    for path, field in _parts(name)["fields"]:
        leaf = path.rsplit(".", 1)[1]
        if leaf in ("side", "kind", "tif", "stp", "reason", "taker_side", "code", "error_code"):
            if name == "dead_letter" and leaf == "reason":
                continue    # the DLQ's reason is the human-readable text; error_code is the enum
            assert field["type"] == "int", path
            assert any(ch.isdigit() for ch in field["doc"]), f"{path}: enum values not documented"


def _union(name, field):
    return {b["name"]: b for b in next(f for f in RAW[name]["fields"] if f["name"] == field)["type"]}


def test_event_schema_mirrors_engine_domain_field_for_field():
    envelope = [f["name"] for f in RAW["engine_event"]["fields"]]
    assert envelope == [*ENVELOPE, "event"]
    branches = _union("engine_event", "event")
    assert list(branches) == [cls.__name__ for cls in EVENT_TYPES]
    for cls in EVENT_TYPES:
        fields = [f["name"] for f in branches[cls.__name__]["fields"]]
        assert fields == list(cls._fields[len(ENVELOPE):]), cls.__name__


def test_command_schema_mirrors_engine_domain_field_for_field():
    branches = _union("order_command", "command")
    assert list(branches) == [cls.__name__ for cls in COMMAND_TYPES]
    for cls in COMMAND_TYPES:
        assert [f["name"] for f in branches[cls.__name__]["fields"]] == list(cls._fields)


def test_record_names_are_unique_across_files():
    # Data engineers often load every .avsc into one name table (avro-tools, Spark).
    seen: dict[str, str] = {}
    for name in NAMES:
        for _, record in _parts(name)["records"]:
            assert record["name"] not in seen or seen[record["name"]] == name, record["name"]
            seen[record["name"]] = name


def test_current_schema_is_the_latest_released_version():
    catalog = default_catalog()
    for name in NAMES:
        released = catalog.versions[name]
        assert [v.version for v in released] == list(range(1, len(released) + 1))
        assert catalog.current[name].version == released[-1].version
        assert catalog.current[name].fingerprint == released[-1].fingerprint
    assert catalog.current["ticker"].version == 2


def test_unreleased_change_is_refused(tmp_path):
    shutil.copytree(SCHEMA_DIR / "versions", tmp_path / "versions")
    for name in NAMES:
        shutil.copy(SCHEMA_DIR / f"{name}.avsc", tmp_path)
    assert sorted(load_catalog(tmp_path).current) == NAMES
    changed = dict(RAW["balance"])
    changed["fields"] = [*changed["fields"], {"name": "x", "type": "long", "doc": "new"}]
    (tmp_path / "balance.avsc").write_text(json.dumps(changed))
    with pytest.raises(CatalogError, match="balance.*release it as versions/balance/v2"):
        load_catalog(tmp_path)
