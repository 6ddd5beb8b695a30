"""The schema files: current schemas, released versions and their fingerprints.

Each message has a current schema `schemas/<name>.avsc` and every released version
under `schemas/versions/<name>/v<N>.avsc`. The current file must equal (in Parsing
Canonical Form) one released version; readers know every released version by its
CRC-64-AVRO fingerprint, so bytes from an older writer still decode.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent
VERSIONS_DIR = SCHEMA_DIR / "versions"

# Short topic name (settings.topic(short) gives the full one) -> schema name.
TOPIC_SCHEMAS: dict[str, str] = {
    "requests": "order_request",
    "replies": "reply",
    "orders": "order_command",
    "events": "engine_event",
    "depth": "depth_update",
    "settlements": "settlement",
    "balances": "balance",
    "tickers": "ticker",
    "candles": "candle",
    "engine.snapshots": "engine_snapshot",
    "dlq": "dead_letter",
}
SCHEMA_TOPICS: dict[str, str] = {schema: topic for topic, schema in TOPIC_SCHEMAS.items()}


class CatalogError(ValueError):
    """The schema files are inconsistent (a packaging bug, found at start-up)."""


def fingerprint64(raw: dict | str) -> bytes:
    """8-byte little-endian CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form."""
    # fastavro's hex digest is already in little-endian byte order (the Avro spec's
    # single-object encoding order); tests pin it against the spec's test vector.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    name: str               # file stem, e.g. "engine_event"
    version: int            # released version number
    raw: dict = field(repr=False)       # the JSON as written (with docs)
    parsed: dict = field(repr=False)    # fastavro's parsed form, for reading/writing
    canonical: str = field(repr=False)  # Parsing Canonical Form
    fingerprint: bytes = b""

    @property
    def full_name(self) -> str:
        return f"{self.raw.get('namespace', '')}.{self.raw['name']}".lstrip(".")

    @property
    def text(self) -> str:
        """The schema as JSON text with its docs (what a registry stores)."""
        return json.dumps(self.raw, separators=(",", ":"))


def _load(path: Path, name: str, version: int) -> SchemaVersion:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from None
    # Each schema gets its own name table: the same record name in two files never clashes.
    parsed = parse_schema(json.loads(json.dumps(raw)), named_schemas={})
    return SchemaVersion(name, version, raw, parsed, to_parsing_canonical_form(raw),
                         fingerprint64(raw))


@dataclass(frozen=True)
class Catalog:
    current: dict[str, SchemaVersion]           # name -> current schema
    versions: dict[str, list[SchemaVersion]]    # name -> released versions, oldest first
    by_fingerprint: dict[bytes, SchemaVersion]  # every released version of every schema

    def schema(self, name: str) -> SchemaVersion:
        try:
            return self.current[name]
        except KeyError:
            raise KeyError(f"no schema named {name!r}; known: {sorted(self.current)}") from None

    def for_topic(self, short_topic: str) -> SchemaVersion:
        return self.schema(TOPIC_SCHEMAS[short_topic])


def load_catalog(directory: Path = SCHEMA_DIR) -> Catalog:
    versions_dir = directory / "versions"
    current: dict[str, SchemaVersion] = {}
    versions: dict[str, list[SchemaVersion]] = {}
    by_fp: dict[bytes, SchemaVersion] = {}
    for path in sorted(directory.glob("*.avsc")):
        name = path.stem
        released = []
        for vpath in sorted((versions_dir / name).glob("v*.avsc"),
                            key=lambda p: int(p.stem[1:])):
            released.append(_load(vpath, name, int(vpath.stem[1:])))
        if not released:
            raise CatalogError(f"{name}: no released version under {versions_dir / name}")
        now = _load(path, name, 0)
        match = [v for v in released if v.canonical == now.canonical]
        if not match:
            raise CatalogError(f"{name}: {path.name} differs from every released version; "
                               f"release it as versions/{name}/v{released[-1].version + 1}.avsc")
        current[name] = SchemaVersion(name, match[-1].version, now.raw, now.parsed,
                                      now.canonical, now.fingerprint)
        versions[name] = released
        for v in released:
            other = by_fp.get(v.fingerprint)
            if other is not None and other.name != name:
                raise CatalogError(f"{name} v{v.version} has the fingerprint of {other.name}")
            by_fp[v.fingerprint] = v
    if not current:
        raise CatalogError(f"no *.avsc schema in {directory}")
    return Catalog(current, versions, by_fp)


@cache
def default_catalog() -> Catalog:
    """The catalog of this package's schema files, loaded once per process."""
    return load_catalog()
