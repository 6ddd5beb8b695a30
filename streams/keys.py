"""Record keys and partitions of the user-hashed topics (keel.requests, keel.settlements,
keel.balances), in one place.

accounts holds a user's state on the partition of keel.requests that carries the user's
requests, so keel.settlements must put the same user on the same partition number. Every
writer therefore picks the partition explicitly with `user_partition` (Java's murmur2, as
aiokafka's default partitioner and librdkafka's `murmur2_random` compute it) instead of
trusting each client library's default partitioner, which differ (librdkafka's default
is CRC32).
"""
from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


def user_key(user_id: int) -> bytes:
    return str(user_id).encode()


@lru_cache(maxsize=1 << 16)
def user_partition(user_id: int, partitions: int) -> int:
    # cached: aiokafka's murmur2 is pure Python, ~3.5 us a call, and accounts asks twice
    # per order (the request's partition check, its balance record) for a few active users
    return (murmur2(user_key(user_id)) & 0x7FFFFFFF) % partitions
