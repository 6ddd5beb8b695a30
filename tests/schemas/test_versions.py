"""Schema evolution: every current schema reads the previous release's data and the
previous release reads the current one's (backward + forward), checked by the avro
package's checker, and bytes from an older writer decode through fingerprint resolution."""
from __future__ import annotations

import json
import shutil

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.catalog import SCHEMA_DIR, default_catalog, load_catalog
from schemas.codec import Codec
from schemas.errors import CodecError, CodecFault

from .samples import RECORDS

CATALOG = default_catalog()
PAIRS = [(name, old, new) for name, released in sorted(CATALOG.versions.items())
         for old, new in zip(released, released[1:], strict=False)]
CHECKER = ReaderWriterCompatibilityChecker()


def _compatible(reader, writer) -> bool:
    result = CHECKER.get_compatibility(avro.schema.parse(json.dumps(reader.raw)),
                                       avro.schema.parse(json.dumps(writer.raw)))
    return result.compatibility is SchemaCompatibilityType.compatible


def test_at_least_one_schema_has_evolved():
    assert ("ticker", 1, 2) in [(n, o.version, v.version) for n, o, v in PAIRS]


@pytest.mark.parametrize(("name", "old", "new"), PAIRS,
                         ids=[f"{n}-v{o.version}-v{v.version}" for n, o, v in PAIRS])
def test_consecutive_versions_are_backward_and_forward_compatible(name, old, new):
    assert _compatible(reader=new, writer=old), f"{name} v{new.version} cannot read v{old.version}"
    assert _compatible(reader=old, writer=new), f"{name} v{old.version} cannot read v{new.version}"


@pytest.mark.parametrize("name", sorted(CATALOG.current))
def test_current_reads_every_released_version(name):
    current = CATALOG.current[name]
    for old in CATALOG.versions[name]:
        assert _compatible(reader=current, writer=old)


def test_checker_catches_an_incompatible_change():
    # The test above could fail: a new required field without a default is refused.
    ticker = CATALOG.current["ticker"]
    broken = json.loads(json.dumps(ticker.raw))
    broken["fields"].append({"name": "vwap", "type": "long", "doc": "no default"})
    result = CHECKER.get_compatibility(avro.schema.parse(json.dumps(broken)),
                                       avro.schema.parse(json.dumps(ticker.raw)))
    assert result.compatibility is SchemaCompatibilityType.incompatible


def _v1_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("first_trade_id", "last_trade_id")}


def _v1_release(tmp_path):
    """The schema directory as the v1 release shipped it (ticker without trade ids)."""
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, tmp_path)
    shutil.copytree(SCHEMA_DIR / "versions", tmp_path / "versions")
    (tmp_path / "versions" / "ticker" / "v2.avsc").unlink()
    shutil.copy(SCHEMA_DIR / "versions" / "ticker" / "v1.avsc", tmp_path / "ticker.avsc")
    return load_catalog(tmp_path)


def test_v1_bytes_decode_under_v2_by_fingerprint(tmp_path):
    old = Codec(_v1_release(tmp_path))
    new = Codec()
    assert old.catalog.current["ticker"].version == 1
    for record in RECORDS["ticker"]:
        data = old.encode("ticker", _v1_record(record))
        assert data[2:10] == CATALOG.versions["ticker"][0].fingerprint
        decoded = new.decode("ticker", data)
        # Resolved to the current (v2) schema: the new fields take their defaults.
        assert decoded == dict(_v1_record(record), first_trade_id=None, last_trade_id=None)


def test_old_single_object_reader_refuses_newer_bytes_clearly(tmp_path):
    # Single-object readers only know released fingerprints: upgrade readers first.
    old = Codec(_v1_release(tmp_path))
    data = Codec().encode("ticker", RECORDS["ticker"][0])
    with pytest.raises(CodecError) as info:
        old.decode("ticker", data)
    assert info.value.fault is CodecFault.UNKNOWN_SCHEMA
