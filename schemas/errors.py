"""Codec faults as values, and the one exception the codec raises.

A consumer that catches `CodecError` puts the raw record on keel.dlq with
`error.code` and `error.reason`; nothing else about the failure is needed.
The -12xx range sits beside engine.domain.ResultCode's -1xxx "the request
itself" stage: an undecodable record is a malformed input, not a business outcome.
"""
from __future__ import annotations

from enum import IntEnum


class CodecFault(IntEnum):
    BAD_FRAMING = -1201      # neither single-object (C3 01) nor registry (00) framing
    UNKNOWN_SCHEMA = -1202   # fingerprint / registry id not known to this reader
    TRUNCATED = -1203        # the bytes end before the header or the body does
    MALFORMED = -1204        # the body does not decode under its writer schema
    WRONG_SCHEMA = -1205     # a known schema, but not the one this topic carries
    INVALID_RECORD = -1206   # encode: the record does not match the schema (a bug)
    REGISTRY_UNAVAILABLE = -1207  # transient: retry, do not dead-letter


class CodecError(ValueError):
    """Why bytes could not be decoded (or a record encoded); `code` is a CodecFault."""

    def __init__(self, fault: CodecFault, reason: str) -> None:
        super().__init__(f"{fault.name}: {reason}")
        self.fault = fault
        self.code = int(fault)
        self.reason = reason


class RegistryUnavailable(CodecError):
    """The schema registry could not be reached or failed; the record itself may be fine."""

    def __init__(self, reason: str) -> None:
        super().__init__(CodecFault.REGISTRY_UNAVAILABLE, reason)
