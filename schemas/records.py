"""engine.domain commands and events <-> the Avro records of keel.orders and keel.events.

Field order in the schemas mirrors the NamedTuples, so conversion is a zip one way
and an itemgetter the other; `tests/schemas` pins that the round trip is exact.
Union branches are written in fastavro's tuple notation `(full name, body)`, which
picks the branch by name: Cancelled and Expired have identical fields, so matching
by shape would pick the wrong one.
"""
from __future__ import annotations

from operator import itemgetter

from engine.domain import (
    EVENT_TYPES,
    Amend,
    Cancel,
    CancelAll,
    Command,
    Event,
    Place,
    SetTrading,
)

NAMESPACE = "keel"
COMMAND_TYPES: tuple[type, ...] = (Place, Cancel, Amend, CancelAll, SetTrading)
ENVELOPE = ("pair", "seq", "ts")     # event fields that live in the EngineEvent envelope


def _tables(types: tuple[type, ...], skip: int):
    name_of: dict[type, tuple[str, tuple[str, ...]]] = {}
    by_name: dict[str, tuple[type, itemgetter]] = {}
    for cls in types:
        full = f"{NAMESPACE}.{cls.__name__}"
        fields = cls._fields[skip:]
        name_of[cls] = (full, fields)
        # itemgetter over one name returns a bare value, not a tuple: wrap it.
        getter = itemgetter(*fields) if len(fields) > 1 else (lambda d, f=fields[0]: (d[f],))
        by_name[full] = by_name[cls.__name__] = (cls, getter)
    return name_of, by_name


_EVENT_NAME, _EVENT_BY_NAME = _tables(EVENT_TYPES, len(ENVELOPE))
_COMMAND_NAME, _COMMAND_BY_NAME = _tables(COMMAND_TYPES, 0)
_new = tuple.__new__


def event_to_record(event: Event) -> dict:
    """An engine event as a keel.EngineEvent record (fastavro tuple notation for the union)."""
    name, fields = _EVENT_NAME[type(event)]
    return {"pair": event[0], "seq": event[1], "ts": event[2],
            "event": (name, dict(zip(fields, event[3:], strict=True)))}


def record_to_event(record: dict) -> Event:
    """The engine event a keel.EngineEvent record holds (as decoded, or as built above)."""
    name, body = record["event"]
    try:
        cls, getter = _EVENT_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown engine event {name!r}") from None
    return _new(cls, (record["pair"], record["seq"], record["ts"], *getter(body)))


def command_to_record(command: Command, request_id: str | None = None) -> dict:
    """An engine command as a keel.OrderCommand record, with the request it came from."""
    name, fields = _COMMAND_NAME[type(command)]
    return {"request_id": request_id, "command": (name, dict(zip(fields, command, strict=True)))}


def record_to_command(record: dict) -> Command:
    """The engine command a keel.OrderCommand record holds (its request_id is record['request_id'])."""
    name, body = record["command"]
    try:
        cls, getter = _COMMAND_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown engine command {name!r}") from None
    return _new(cls, getter(body))
