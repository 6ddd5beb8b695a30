"""Avro schemas (one .avsc per message, released versions under versions/) and the codec.

    from schemas import Codec, CodecError
    codec = Codec.from_settings(settings)
    data = codec.encode_event(event); event = codec.decode_event(data)
    data = codec.encode("ticker", record); record = codec.decode("ticker", data)
"""
from schemas.catalog import TOPIC_SCHEMAS, Catalog, SchemaVersion, default_catalog, load_catalog
from schemas.codec import Codec
from schemas.errors import CodecError, CodecFault, RegistryUnavailable
from schemas.records import command_to_record, event_to_record, record_to_command, record_to_event
from schemas.registry import SchemaRegistry

__all__ = [
    "TOPIC_SCHEMAS", "Catalog", "SchemaVersion", "default_catalog", "load_catalog",
    "Codec", "CodecError", "CodecFault", "RegistryUnavailable", "SchemaRegistry",
    "event_to_record", "record_to_event", "command_to_record", "record_to_command",
]
