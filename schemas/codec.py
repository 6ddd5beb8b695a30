"""Avro codec for every Keel topic: fastavro on the hot path, two framings.

Single-object encoding (the default): C3 01, the writer schema's 8-byte
little-endian CRC-64-AVRO fingerprint, then the Avro binary body. A reader knows
every released version of every schema by fingerprint (schemas/versions/), so
older writers' bytes decode, resolved to the current schema.

Confluent framing (when settings.schema_registry_url is set): 00, the 4-byte
big-endian registry id, then the body. Schemas are registered under the topic
name strategy's subject "<topic>-value" on first use (or at start with
`register_all`). A registry-mode codec decodes both framings, so topics can
move from one to the other without a flag day.

Every failure to decode raises `CodecError` whose `code` (a CodecFault) and
`reason` go on keel.dlq with the raw bytes. A registry outage raises the
subclass `RegistryUnavailable`: retry that, it is not the record's fault.
"""
from __future__ import annotations

import json
from io import BytesIO

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from engine.domain import Command, Event
from schemas.catalog import SCHEMA_TOPICS, Catalog, SchemaVersion, default_catalog
from schemas.errors import CodecError, CodecFault, RegistryUnavailable
from schemas.records import (
    command_to_record,
    event_to_record,
    record_to_command,
    record_to_event,
)
from schemas.registry import SchemaRegistry

MARKER = b"\xc3\x01"
SINGLE_HEADER = 10              # marker + fingerprint
REGISTRY_MAGIC = 0
REGISTRY_HEADER = 5             # magic + schema id
EVENTS, COMMANDS = "engine_event", "order_command"

# (header length, writer schema, reader schema or None when writer == reader)
_Entry = tuple[int, dict, dict | None]

__all__ = [
    "Codec", "CodecError", "CodecFault", "RegistryUnavailable",
    "event_to_record", "record_to_event", "command_to_record", "record_to_command",
]


class Codec:
    def __init__(self, catalog: Catalog | None = None, registry: SchemaRegistry | None = None,
                 topic_prefix: str = "keel.", validate: bool = True) -> None:
        self.catalog = catalog or default_catalog()
        self.registry = registry
        self.topic_prefix = topic_prefix
        # encode() checks records against the schema first: fastavro alone would
        # truncate a float into a long field, and money is never a float.
        self.validate = validate
        self._writers: dict[str, tuple[bytes, dict]] = {}
        self._readers: dict[str, dict[bytes, _Entry]] = {}
        self._by_id: dict[tuple[str, int], _Entry] = {}
        for name, current in self.catalog.current.items():
            if registry is None:
                self._writers[name] = (MARKER + current.fingerprint, current.parsed)
            table = self._readers[name] = {}
            for old in self.catalog.versions[name]:
                same = old.canonical == current.canonical
                table[MARKER + old.fingerprint] = (
                    SINGLE_HEADER, current.parsed if same else old.parsed,
                    None if same else current.parsed)

    @classmethod
    def from_settings(cls, settings, validate: bool = True) -> Codec:
        url = settings.schema_registry_url
        return cls(registry=SchemaRegistry(url) if url else None,
                   topic_prefix=settings.topic_prefix, validate=validate)

    # ---- generic records ----

    def encode(self, name: str, record: dict, validate: bool | None = None) -> bytes:
        """Avro bytes, framed, of `record` under the current schema `name`."""
        header, parsed = self._writers.get(name) or self._writer(name)
        if self.validate if validate is None else validate:
            try:
                validate_record(record, parsed)
            except ValidationError as exc:
                raise CodecError(CodecFault.INVALID_RECORD, f"{name}: {exc}") from None
        out = BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, parsed, record)
        except (TypeError, ValueError, OverflowError, KeyError, AttributeError) as exc:
            raise CodecError(CodecFault.INVALID_RECORD, f"{name}: {exc}") from None
        return out.getvalue()

    def decode(self, name: str, data: bytes) -> dict:
        """The record in `data`, as the current schema `name` reads it."""
        try:
            entry = self._readers[name].get(data[:SINGLE_HEADER])
        except KeyError:
            raise KeyError(f"no schema named {name!r}") from None
        except TypeError:
            raise CodecError(CodecFault.BAD_FRAMING, f"value is {type(data).__name__}, not bytes") from None
        if entry is None:
            entry = self._resolve(name, data)
        return _read(name, data, *entry)

    def decode_any(self, data: bytes) -> tuple[str, dict]:
        """(schema name, record) for bytes of any known schema: for tools and the DLQ."""
        name = self._writer_name(data)
        return name, self.decode(name, data)

    # ---- engine events and commands: the engine's hot path ----

    def encode_event(self, event: Event) -> bytes:
        header, parsed = self._writers.get(EVENTS) or self._writer(EVENTS)
        out = BytesIO()
        out.write(header)
        schemaless_writer(out, parsed, event_to_record(event))
        return out.getvalue()

    def decode_event(self, data: bytes) -> Event:
        return record_to_event(self.decode(EVENTS, data))

    def encode_command(self, command: Command, request_id: str | None = None) -> bytes:
        return self.encode(COMMANDS, command_to_record(command, request_id), validate=False)

    def decode_command(self, data: bytes) -> tuple[Command, str | None]:
        record = self.decode(COMMANDS, data)
        return record_to_command(record), record["request_id"]

    # ---- framing ----

    def subject(self, name: str) -> str:
        return f"{self.topic_prefix}{SCHEMA_TOPICS[name]}-value"

    def register_all(self) -> None:
        """Registry mode: register every current schema now rather than on first use."""
        for name in self.catalog.current:
            self._writers.get(name) or self._writer(name)

    def _writer(self, name: str) -> tuple[bytes, dict]:
        current = self.catalog.schema(name)
        if self.registry is None:                      # pragma: no cover - built in __init__
            raise KeyError(name)
        schema_id = self.registry.register(self.subject(name), current.text)
        writer = (bytes([REGISTRY_MAGIC]) + schema_id.to_bytes(4, "big"), current.parsed)
        self._writers[name] = writer
        return writer

    def _resolve(self, name: str, data: bytes) -> _Entry:
        """The slow path: registry framing, or say exactly why the header is wrong."""
        if not data:
            raise CodecError(CodecFault.TRUNCATED, f"{name}: empty value")
        if data[0] == REGISTRY_MAGIC:
            return self._registry_entry(name, data)
        if data[:2] != MARKER[:len(data[:2])]:
            raise CodecError(CodecFault.BAD_FRAMING,
                             f"{name}: value starts {data[:2].hex()}, not the single-object "
                             f"marker c301 or registry magic 00")
        if len(data) < SINGLE_HEADER:
            raise CodecError(CodecFault.TRUNCATED,
                             f"{name}: {len(data)} bytes, shorter than the 10-byte header")
        found = self.catalog.by_fingerprint.get(data[2:SINGLE_HEADER])
        if found is None:
            raise CodecError(CodecFault.UNKNOWN_SCHEMA,
                             f"{name}: unknown schema fingerprint {data[2:SINGLE_HEADER].hex()} "
                             f"(written by a newer release or another system?)")
        raise CodecError(CodecFault.WRONG_SCHEMA,
                         f"expected {name}, got {found.name} v{found.version}")

    def _registry_entry(self, name: str, data: bytes) -> _Entry:
        if self.registry is None:
            raise CodecError(CodecFault.UNKNOWN_SCHEMA,
                             f"{name}: registry-framed value but no schema registry configured")
        if len(data) < REGISTRY_HEADER:
            raise CodecError(CodecFault.TRUNCATED,
                             f"{name}: {len(data)} bytes, shorter than the 5-byte registry header")
        schema_id = int.from_bytes(data[1:REGISTRY_HEADER], "big")
        entry = self._by_id.get((name, schema_id))
        if entry is not None:
            return entry
        current = self.catalog.schema(name)
        writer_raw = self._registry_schema(schema_id)
        full = _full_name(writer_raw)
        if full != current.full_name:
            raise CodecError(CodecFault.WRONG_SCHEMA,
                             f"expected {name} ({current.full_name}), registry id {schema_id} is {full}")
        if to_parsing_canonical_form(writer_raw) == current.canonical:
            entry = (REGISTRY_HEADER, current.parsed, None)
        else:
            entry = (REGISTRY_HEADER, parse_schema(writer_raw, named_schemas={}), current.parsed)
        self._by_id[(name, schema_id)] = entry
        return entry

    def _registry_schema(self, schema_id: int) -> dict | str:
        text = self.registry.schema(schema_id)
        try:
            return json.loads(text)
        except ValueError:
            raise RegistryUnavailable(f"registry id {schema_id} holds invalid JSON") from None

    def _writer_name(self, data: bytes) -> str:
        if data[:2] == MARKER and len(data) >= SINGLE_HEADER:
            found = self.catalog.by_fingerprint.get(data[2:SINGLE_HEADER])
            if found is not None:
                return found.name
        elif data[:1] == b"\x00" and self.registry is not None and len(data) >= REGISTRY_HEADER:
            full = _full_name(self._registry_schema(int.from_bytes(data[1:5], "big")))
            for current in self.catalog.current.values():
                if current.full_name == full:
                    return current.name
            raise CodecError(CodecFault.UNKNOWN_SCHEMA, f"registry schema {full} is not Keel's")
        # Let the named path explain the fault precisely.
        self._resolve(next(iter(self.catalog.current)), data)
        raise AssertionError("unreachable")  # pragma: no cover


def _read(name: str, data: bytes, header: int, writer: dict, reader: dict | None) -> dict:
    buf = BytesIO(data)
    buf.seek(header)
    try:
        record = schemaless_reader(buf, writer, reader, return_record_name=True)
    except EOFError:
        raise CodecError(CodecFault.TRUNCATED, f"{name}: body ends early ({len(data)} bytes)") from None
    except SchemaResolutionError as exc:
        raise CodecError(CodecFault.WRONG_SCHEMA, f"{name}: {exc}") from None
    except (IndexError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError,
            MemoryError) as exc:
        raise CodecError(CodecFault.MALFORMED, f"{name}: body does not decode: "
                         f"{type(exc).__name__}: {exc}") from None
    if buf.tell() != len(data):
        raise CodecError(CodecFault.MALFORMED,
                         f"{name}: {len(data) - buf.tell()} bytes left after the record")
    return record


def _full_name(raw: dict | str) -> str:
    if not isinstance(raw, dict) or "name" not in raw:
        return repr(raw)[:60]
    name = raw["name"]
    return name if "." in name else f"{raw.get('namespace', '')}.{name}".lstrip(".")


def validate_record(record: dict, parsed: dict) -> None:
    validate(record, parsed, raise_errors=True)


def schema_version(name: str) -> SchemaVersion:
    """The current schema `name` of this package (docs, fingerprint, version)."""
    return default_catalog().schema(name)
